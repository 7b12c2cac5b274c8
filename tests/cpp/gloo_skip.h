// The multi-process tests run their ranks over Gloo; torch builds without
// Gloo's headers (pip wheels of torch 2.x) skip them with a message.
#pragma once

#include <gtest/gtest.h>

#ifndef DYNAMOE_GLOO_MISSING
#define DYNAMOE_GLOO_MISSING 0
#endif

#define DYNAMOE_SKIP_WITHOUT_GLOO()                                                              \
  if (DYNAMOE_GLOO_MISSING)                                                                      \
  GTEST_SKIP() << "this torch has no Gloo headers (a pip wheel): the multi-process tests run on " \
                  "a torch with Gloo (the Debian build)"
