{
  "targets": [{
    "target_name": "v4tune_mpi",
    "sources": ["mpi.cpp"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "OMPI_SKIP_MPICXX=1", "MPICH_SKIP_MPICXX=1"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
    "cflags": ["-O2", "-fexceptions", "<!@(node -p \"process.env.V4TUNE_MPI_CFLAGS || ''\")"],
    "cflags_cc": ["-O2", "-std=c++17", "-fexceptions", "-Wall", "<!@(node -p \"process.env.V4TUNE_MPI_CFLAGS || ''\")"],
    "libraries": ["<!@(node -p \"process.env.V4TUNE_MPI_LIBS || ''\")"]
  }]
}
