{
  "targets": [{
    "target_name": "v4tune_native",
    "sources": [
      "addon.cpp",
      "direct_io.cc",
      "../kernels/cpu/common.cpp",
      "../kernels/cpu/weights.cpp",
      "../kernels/cpu/gemm.cpp",
      "../kernels/cpu/lora.cpp",
      "../kernels/cpu/norm.cpp",
      "../kernels/cpu/attention.cpp",
      "../kernels/cpu/indexer.cpp",
      "../kernels/cpu/mhc.cpp",
      "../kernels/cpu/compressor.cpp",
      "../kernels/cpu/lmhead.cpp",
      "../kernels/cpu/gptq.cpp",
      "../kernels/cpu/requant.cpp",
      "../kernels/cpu/q4k.cpp",
      "../kernels/cpu/bench.cpp",
      "ascend_acl.cc",
      "ascend_hccl.cc",
      "ascend_host.cc"
    ],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "../kernels/cpu", "../kernels/ascend"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
    "cflags": ["-O3", "-fexceptions"],
    "cflags_cc": ["-O3", "-std=c++17", "-fexceptions", "-Wall", "-Wno-unused-function", "-Wno-uninitialized", "-Wno-maybe-uninitialized"],
    "libraries": ["-lpthread", "-ldl"]
  }]
}
