#!/usr/bin/python3
"""Map a tensor that `qvlmoefs -o gpu=N` staged, in another process, without reading a file.

    import qvlmoefs_gpu
    t = qvlmoefs_gpu.tensor("/mnt/qwen", "model.language_model.layers.0.mlp.experts.gate_and_up_projs")

The daemon lists each staged tensor in MOUNT/.qvlmoefs/gpu.json with its state, dtype, shape,
and its offset and size in one device allocation whose CUDA IPC handle is given; this module
opens that handle with the CUDA runtime (ctypes) and returns a torch tensor (if torch is
installed), else a cupy array (if cupy is), else a (device pointer, bytes) pair. Standard
library only otherwise. `python3 qvlmoefs_gpu.py MOUNT [NAME]` prints the entries or one tensor;
a mount without `gpu=`, a tensor not staged or no CUDA runtime gives one line and exit status 1.
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


class NotStaged(FileNotFoundError):
    """The mount has no .qvlmoefs/gpu.json: not a qvlmoefs mount, or mounted without gpu=N."""


def status(mount):
    """The parsed .qvlmoefs/gpu.json of a mount; NotStaged when the mount stages nothing."""
    path = os.path.join(mount, ".qvlmoefs", "gpu.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        why = ("not a qvlmoefs mount" if not os.path.isdir(os.path.join(mount, ".qvlmoefs"))
               else "mounted without -o gpu=N")
        raise NotStaged(f"{mount}: no GPU staging here ({why}; {path} does not exist)") from None


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


class _IpcHandle(ctypes.Structure):
    """cudaIpcMemHandle_t: the runtime takes it by value (a 64-byte struct, passed in memory on
    x86-64), so it must be a Structure with argtypes set, not a char array (a pointer)."""
    _fields_ = [("reserved", ctypes.c_char * 64)]


def device_pointer(st):
    """Open the allocation's IPC handle on its device; the base device pointer."""
    key = (st["device"], st["ipc_handle"])
    if key not in _opened:
        rt = _cudart()
        if rt.cudaSetDevice(ctypes.c_int(st["device"])) != 0:
            raise OSError(f"cudaSetDevice({st['device']}) failed")
        if len(st["ipc_handle"]) != 128:
            raise OSError("gpu.json has no IPC handle (the runtime gave none)")
        handle = _IpcHandle.from_buffer_copy(bytes.fromhex(st["ipc_handle"]))
        ptr = ctypes.c_void_p()
        rt.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle,
                                            ctypes.c_uint]
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
        if torch.cuda.is_available():  # a CPU-only torch cannot hold a device pointer
            x = torch.as_tensor(arr, device=f"cuda:{st['device']}")
            return (x.view(getattr(torch, tname)) if tname in ("bfloat16",) or tname.startswith("float8")
                    else x)
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
    try:
        if len(argv) == 2:
            for t in status(argv[1])["tensors"]:
                print(f"{t['state']:8} {t['dtype']:5} {str(t['shape']):20} {t['name']}")
            return 0
        print(tensor(argv[1], argv[2]))
        return 0
    except KeyError as e:
        print(f"qvlmoefs_gpu: {argv[1]}: no staged tensor {e}", file=sys.stderr)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"qvlmoefs_gpu: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
