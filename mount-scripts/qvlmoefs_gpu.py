#!/usr/bin/python3
"""Map a tensor that `qvlmoefs -o gpu=N` staged, in another process, without reading a file.

    import qvlmoefs_gpu
    t = qvlmoefs_gpu.tensor("/mnt/qwen", "model.language_model.layers.0.mlp.experts.gate_and_up_projs")

The daemon lists each staged tensor in MOUNT/.qvlmoefs/gpu.json with its state, dtype, shape,
and its offset and size in one device allocation whose CUDA IPC handle is given; this module
opens that handle with the CUDA runtime (ctypes) and returns a torch tensor (if torch is
installed), else a cupy array (if cupy is), else a (device pointer, bytes) pair. Standard
library only otherwise. `python3 qvlmoefs_gpu.py MOUNT [NAME]` prints the entries or one tensor.
"""
import ctypes
import json
import os
import sys

# safetensors dtype -> (__cuda_array_interface__ typestr, torch dtype name, bytes)
DTYPES = {
    "BOOL": ("|b1", "bool", 1), "U8": ("|u1", "uint8", 1), "I8": ("|i1", "int8", 1),
    "I16": ("<i2", "int16", 2), "U16": ("<u2", "uint16", 2), "F16": ("<f2", "float16", 2),
    "BF16": ("<i2", "bfloat16", 2), "I32": ("<i4", "int32", 4), "U32": ("<u4", "uint32", 4),
    "F32": ("<f4", "float32", 4), "F64": ("<f8", "float64", 8), "I64": ("<i8", "int64", 8),
    "U64": ("<u8", "uint64", 8), "F8_E4M3": ("|u1", "float8_e4m3fn", 1),
    "F8_E5M2": ("|u1", "float8_e5m2", 1),
}
_opened = {}  # (device, handle) -> base pointer: a handle may be opened once per process


def status(mount):
    """The parsed .qvlmoefs/gpu.json of a mount."""
    with open(os.path.join(mount, ".qvlmoefs", "gpu.json")) as f:
        return json.load(f)


def entry(mount, name):
    """The status entry of one tensor; raises KeyError or RuntimeError when not ready."""
    st = status(mount)
    for t in st["tensors"]:
        if t["name"] == name:
            if t["state"] != "ready":
                raise RuntimeError(f"{name} is {t['state']}, not ready")
            return st, t
    raise KeyError(name)


def _cudart():
    for lib in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        try:
            return ctypes.CDLL(lib)
        except OSError:
            pass
    raise OSError("no CUDA runtime (libcudart.so) found")


def device_pointer(st):
    """Open the allocation's IPC handle on its device; the base device pointer."""
    key = (st["device"], st["ipc_handle"])
    if key not in _opened:
        rt = _cudart()
        if rt.cudaSetDevice(ctypes.c_int(st["device"])) != 0:
            raise OSError(f"cudaSetDevice({st['device']}) failed")
        handle = (ctypes.c_char * 64).from_buffer_copy(bytes.fromhex(st["ipc_handle"]))
        ptr = ctypes.c_void_p()
        rc = rt.cudaIpcOpenMemHandle(ctypes.byref(ptr), handle, ctypes.c_uint(1))
        if rc != 0:
            raise OSError(f"cudaIpcOpenMemHandle failed with CUDA error {rc}")
        _opened[key] = ptr.value
    return _opened[key]


class _CudaArray:
    """Just enough of __cuda_array_interface__ for torch.as_tensor and cupy."""

    def __init__(self, ptr, shape, typestr):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                         "data": (ptr, True), "version": 3, "strides": None}


def tensor(mount, name):
    """The staged tensor `name` as a torch tensor, cupy array or (pointer, bytes)."""
    st, t = entry(mount, name)
    typestr, tname, _ = DTYPES[t["dtype"]]
    ptr = device_pointer(st) + t["offset"]
    arr = _CudaArray(ptr, t["shape"], typestr)
    try:
        import torch
        x = torch.as_tensor(arr, device=f"cuda:{st['device']}")
        return x.view(getattr(torch, tname)) if tname in ("bfloat16",) or tname.startswith("float8") else x
    except ImportError:
        pass
    try:
        import cupy
        return cupy.asarray(arr)
    except ImportError:
        return ptr, t["size"]


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    if len(argv) == 2:
        for t in status(argv[1])["tensors"]:
            print(f"{t['state']:8} {t['dtype']:5} {str(t['shape']):20} {t['name']}")
        return 0
    print(tensor(argv[1], argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
