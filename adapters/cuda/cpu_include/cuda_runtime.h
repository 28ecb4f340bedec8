// Stub for the CPU build (see ../cuda_on_cpu.h): a .cu file that includes <cuda_runtime.h> compiles unchanged.
#pragma once
#include "../cuda_on_cpu.h"
