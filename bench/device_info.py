"""One paragraph on the machine and the OpenCL device kdsl picks, for the top of a device log.

    python3 bench/device_info.py [--require-gpu]

Lists every OpenCL device (platform, name, driver, compute units, memory),
the one kdsl chooses (KDSL_DEVICE, else PYOPENCL_CTX, else the first GPU)
and torch's CUDA device where torch is importable. With --require-gpu it
exits with an error when the chosen device is not a GPU, so a script can
stop before spending a GPU machine's time on the wrong device.
"""
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl

import kdsl  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    print(f"python {sys.version.split()[0]} | host {platform.node()} | {os.cpu_count()} CPUs")
    for d in kdsl.devices():
        kind = "GPU" if d.is_gpu else "CPU" if d.is_cpu else "other"
        print(f"  OpenCL {d.index}: {d.platform_name!r} {d.name!r} driver {d.driver_version} "
              f"{kind} CUs={d.compute_units} mem={d.global_mem_size / 2**30:.1f}GiB "
              f"local={d.local_mem_size // 1024}KiB max_wg={d.max_work_group_size}")
    dev = kdsl.current_device()
    print(f"chosen device: {dev} | {dev.fingerprint}")
    print(f"env: KDSL_DEVICE={os.environ.get('KDSL_DEVICE')!r} "
          f"PYOPENCL_CTX={os.environ.get('PYOPENCL_CTX')!r}")
    try:
        import torch
        cuda = torch.cuda.is_available() and torch.cuda.get_device_name(0)
        print(f"torch {torch.__version__}, CUDA device: {cuda or 'none'}")
    except ImportError:
        print("torch: not importable")
    if "--require-gpu" in argv and not dev.is_gpu:
        sys.exit("the chosen OpenCL device is not a GPU: stopping (--require-gpu)")


if __name__ == "__main__":
    main()
