// The process's step observers, wired up from the settings on first use:
// DYNAMOE_TRACE's trace recorder, DYNAMOE_METRICS_PORT's metrics exposer
// (port + torchrun's LOCAL_RANK, bound to DYNAMOE_METRICS_ADDR), then any
// the program adds. Layers notify them unless a step names its own list.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "monitor/step_observer.h"

namespace dynamoe::runtime {

// The rank that labels this process's metrics and names its trace file: the
// global rank of its expert-parallel group's member when it has a group, else
// the launcher's RANK (0 without a launcher), so data-parallel processes
// without a group are told apart.
int64_t MonitoringRank(std::optional<int64_t> group_global_rank);

// Created on first use; lives until exit, when the trace closes. Throws
// dynamoe::Error on a bad setting. DYNAMOE_METRICS_PORT in a build without
// prometheus-cpp is an error at the first training step.
monitor::StepObservers& ProcessStepObservers();

// Adds an observer of every layer's steps in this process (after the
// configured ones).
void AddStepObserver(std::shared_ptr<monitor::StepObserver> observer);

}  // namespace dynamoe::runtime
