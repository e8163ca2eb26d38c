# The benchmark image: NGC PyTorch (with its DALI) + FFCV + mlperf-logging + this package.
#   docker build -t mlperf-resnet:latest .
#
# Base: NGC PyTorch 25.12 = PyTorch 2.10.0a0+b4e4ee81d3, CUDA 13.1.0, Python 3.12, Ubuntu 24.04 (NVIDIA's
# "PyTorch Release 25.12" notes). CUDA 13 needs an R580 or newer driver on the host; for an older driver, build
# on an older NGC release (--build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3: PyTorch 2.6, CUDA 12.8).
# Since 25.03 the image's pip honours /etc/pip/constraint.txt, so nothing below can replace its torch, and
# this package is installed with --no-deps (its pyproject pins the CPU-side torch wheel).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

# FFCV's C extension builds against OpenCV 4 and libjpeg-turbo, found through pkg-config; numactl is what
# torchrun's --numa-binding (BIND_CPU=1) calls.
# Unpinned apt versions: the base image fixes the Ubuntu release, and its security updates are welcome.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libturbojpeg0-dev libopencv-dev pkg-config numactl \
 && rm -rf /var/lib/apt/lists/*

# Dependencies before the code, so editing the code does not rebuild FFCV. Nothing here may replace what the
# base image ships (its torch and numpy are built together): every installed version becomes a constraint, so
# pip picks versions that fit them or fails the build. opencv-python 5 (FFCV's dependency) needs numpy >= 2,
# hence the explicit < 5 for bases with numpy 1.x.
RUN pip list --format=freeze > /opt/base-constraints.txt \
 && pip install --no-cache-dir --constraint /opt/base-constraints.txt \
      ffcv==1.0.2 mlperf-logging==4.1.68 "matplotlib>=3.7" "opencv-python<5"

WORKDIR /workspace/resnet
COPY . .
# LOADER=dali uses the DALI the base image ships (NGC PyTorch images include it, built for their CUDA): never a second
# copy from PyPI (pyproject's `dali` extra is for CPU machines and CUDA 12). The build fails here if it is missing.
RUN pip install --no-cache-dir --no-deps -e . \
 && python -c "import torch, ffcv, mlperf_logging, resnet; print('torch', torch.__version__)" \
 && python -c "import nvidia.dali as dali; print('DALI', dali.__version__, 'from the base image')"

# run_with_docker.sh keeps one container alive (`sleep infinity`) and `docker exec`s ./run_and_time.sh per run;
# run.sub gives the command to srun; a bare `docker run` with the settings in the environment runs the benchmark.
CMD ["./run_and_time.sh"]
