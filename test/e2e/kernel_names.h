// The mangled names of the kernels in kernels.cu, as cuModuleGetFunction
// takes them and as the host backend looks them up ("ferry_host_" + name).
// plugin_test.cc checks that these match the images nvcc builds and that
// host_kernels.cc implements every kernel but kMissingHostKernel.
#ifndef FERRY_TEST_E2E_KERNEL_NAMES_H_
#define FERRY_TEST_E2E_KERNEL_NAMES_H_

namespace ferry::e2e {

inline constexpr char kVectorAdd[] = "_Z10vector_addPKfS0_Pfi";
inline constexpr char kPaddedByValue[] = "_Z15padded_by_valuec9E2ePaddedPx";
inline constexpr char kManyParams[] = "_Z11many_paramscsixfdPKi9E2eFloat3hsyPd";
inline constexpr char kScaleFloat[] = "_Z5scaleIfEvPT_S0_i";
inline constexpr char kScaleDouble[] = "_Z5scaleIdEvPT_S0_i";
inline constexpr char kLaunchGeometry[] = "_Z15launch_geometryPj";
inline constexpr char kAddInt[] = "_Z7add_intPiii";
inline constexpr char kProduce[] = "_Z7producePiiiii";
inline constexpr char kConsume[] = "_Z7consumePKiPii";
inline constexpr char kIncrement[] = "e2e_increment";  // extern "C"
inline constexpr char kTick[] = "_Z4tickPji";
inline constexpr char kRingStep[] = "e2e_ring_step";  // extern "C"
// Has no host implementation, on purpose (see the errors program).
inline constexpr char kMissingHostKernel[] = "_Z19missing_host_kernelPi";

inline constexpr const char* kAllKernels[] = {
    kVectorAdd, kPaddedByValue, kManyParams, kScaleFloat, kScaleDouble, kLaunchGeometry,
    kAddInt,    kProduce,       kConsume,    kIncrement,  kTick,        kMissingHostKernel,
    kRingStep,
};

// The module global that the launch program reads and writes.
inline constexpr char kGlobalName[] = "e2e_global";
inline constexpr int kGlobalInitial[4] = {11, 22, 33, 44};

// File names of the images that CMake builds from kernels.cu, in the image
// directory that the programs take as their first argument.
inline constexpr char kFatbinFile[] = "e2e_kernels.fatbin";
inline constexpr char kPtxFile[] = "e2e_kernels.ptx";
inline constexpr char kCubinFile[] = "e2e_kernels.cubin";

}  // namespace ferry::e2e

#endif  // FERRY_TEST_E2E_KERNEL_NAMES_H_
