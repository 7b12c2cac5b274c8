// dynamoe-config: prints the environment-variable table (--markdown, used to
// generate the README section) or checks the current environment (default).
#include <cstring>
#include <iostream>

#include "common/status.h"
#include "config/config.h"

int main(int argc, char** argv) {
  using namespace dynamoe::runtime;
  if (argc > 1 && std::strcmp(argv[1], "--markdown") == 0) {
    std::cout << EnvTableMarkdown();
    return 0;
  }
  if (argc > 1) {
    std::cerr << "usage: dynamoe-config [--markdown]\n";
    return 2;
  }
  std::vector<std::string> warnings;
  auto config = ParseConfig(EnvironmentSnapshot(), &warnings);
  for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
  if (!config.ok()) {
    std::cerr << "error: " << dynamoe::Error::Describe(config.status()) << "\n";
    return 1;
  }
  std::cout << config->Describe() << "\nhash " << std::hex << config->Hash() << "\n";
  return 0;
}
