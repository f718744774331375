# The optional CUDA module, pyfastopt._cuda (included by CMakeLists.txt only with -DPFO_CUDA=ON,
# which PYFASTOPT_CUDA=1 sets through pyproject.toml). A separate extension module: the CPU
# module `_core` and its import never depend on CUDA.
#
# The compiler: CMAKE_CUDA_COMPILER or CUDACXX if given; else the nvcc of the build
# environment's `cuda-toolkit[nvcc,cudart,cccl]` wheels (pyproject.toml adds them to the build
# requirements when PYFASTOPT_CUDA=1); else the nvcc on PATH. CUDA 13 (sm_75 and newer, driver
# >= 580), static cudart (the module needs no libcudart.so at run time and imports on a machine
# without a driver), and no libtorch.
#
# Architectures: PFO_CUDA_ARCHS (CMake's CUDA_ARCHITECTURES syntax), by default SASS for the
# data-centre and consumer GPUs CUDA 13 supports (Turing T4/RTX 20: 75, A100: 80, RTX 30/A10/A40:
# 86, RTX 40/L4/L40: 89, H100/H200: 90, B200/B300: 100, RTX 50/RTX PRO: 120) plus PTX of the
# newest (compute_120), which the driver compiles for GPUs newer than all of these.
# `.ci/cuda` builds a reduced list; docs/cuda.md has the times and sizes of both.
set(PFO_CUDA_ARCHS "75-real;80-real;86-real;89-real;90-real;100-real;120"
    CACHE STRING "CUDA architectures of pyfastopt._cuda (CMake CUDA_ARCHITECTURES syntax)")

if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import nvidia.cu13 as m; print(list(m.__path__)[0])"
    OUTPUT_VARIABLE PFO_PIP_CUDA_ROOT OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE PFO_PIP_CUDA_RC ERROR_QUIET)
  if(PFO_PIP_CUDA_RC EQUAL 0 AND EXISTS "${PFO_PIP_CUDA_ROOT}/bin/nvcc")
    set(CMAKE_CUDA_COMPILER "${PFO_PIP_CUDA_ROOT}/bin/nvcc")
    # the 13.0.x wheels' nvcc.profile names lib64/, the wheel has lib/
    set(CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS} -L${PFO_PIP_CUDA_ROOT}/lib")
    message(STATUS "pyfastopt._cuda: nvcc from the build environment's wheels: ${PFO_PIP_CUDA_ROOT}")
  endif()
endif()
set(CMAKE_CUDA_ARCHITECTURES "${PFO_CUDA_ARCHS}")
enable_language(CUDA)
if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13.0)
  message(FATAL_ERROR "pyfastopt._cuda needs CUDA 13 (nvcc ${CMAKE_CUDA_COMPILER_VERSION} found at "
                      "${CMAKE_CUDA_COMPILER}); set CUDACXX or CMAKE_CUDA_COMPILER")
endif()
message(STATUS "pyfastopt._cuda: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${PFO_CUDA_ARCHS}")

# One unit per algorithm (they compile in parallel), the device queries, the bindings.
set(PFO_CUDA_SOURCES
  csrc/cuda/adadelta.cu
  csrc/cuda/adagrad.cu
  csrc/cuda/adam.cu
  csrc/cuda/counters.cu
  csrc/cuda/device.cu
  csrc/cuda/rmsprop.cu
  csrc/cuda/sgd.cu)
pybind11_add_module(_cuda MODULE NO_EXTRAS csrc/cuda/module.cpp ${PFO_CUDA_SOURCES})
target_include_directories(_cuda PRIVATE csrc/include csrc/cuda)
target_compile_definitions(_cuda PRIVATE PFO_ISA_NS=cuda)
set_target_properties(_cuda PROPERTIES
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_RUNTIME_LIBRARY Static
  CXX_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden
  INTERPROCEDURAL_OPTIMIZATION OFF)
# -fmad=false: a*b+c is never contracted, so the GPU computes the rules' explicit fma exactly
# where the CPU builds do (-ffp-contract=off); IEEE division and square root (nvcc's defaults,
# no fast math). --expt-relaxed-constexpr: std::get/std::tie of rules.h's wrappers on the device.
# --compress-mode=size: each kernel's 30 KB parameter bank (a Launch) is zeros in the binary, and
# the code of ~240 kernels per architecture compresses well (docs/cuda.md: 4-5x smaller; drivers
# >= 580, which CUDA 13 needs anyway, decompress it when the module's kernels first load).
target_compile_options(_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-fmad=false --expt-relaxed-constexpr --compress-mode=size -Xcompiler=-Wall,-Wextra>
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra>)
install(TARGETS _cuda LIBRARY DESTINATION pyfastopt)
