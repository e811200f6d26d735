#!/usr/bin/env bash
# Download, here, the Python wheels the GPU machine lacks (it reaches no package registry), into
# .whl/ at the repository's root (ignored by git; the device call carries it: carry [".whl"]).
#
# The machine's image (/work/.library/device/KINDS.md) has Python 3.12 with torch and jax (CUDA),
# numpy, scipy, matplotlib, seaborn, click, pyyaml, flax, chex, jaxtyping, safetensors, pillow,
# cloudpickle, typing-extensions and six, but not these five. Their own requirements
# (`unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`) are all on the machine:
#   jaxmarl      jax, numpy, flax, safetensors, chex, matplotlib, pillow, jaxtyping, gymnax
#   gymnax       jax, flax, gymnasium, matplotlib, seaborn
#   gymnasium    numpy, cloudpickle, typing-extensions, farama-notifications
#   pettingzoo   numpy, gymnasium, typing-extensions
# Importing SMAX (ctmarl.envs.smax_jax) imports, beyond these: absl, etils, msgpack, opt_einsum,
# rich, pygments, toolz, six (all in the image). ctmarl itself is installed from the working tree
# on the machine (run.sh), so it is always the code being checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl jaxmarl==0.2.0 gymnax==1.0.1 gymnasium==1.3.0 pettingzoo==1.27.0 farama-notifications==0.0.6
ls -l .whl
