"""The pickle of a ``.pt2``'s sample inputs, read (never run) with ``pickletools``: it may only
rebuild tensors in tuples, lists and dicts, as ``torch.export.save`` writes them."""

from __future__ import annotations

import io
import pickletools
import zipfile
import zlib
from pathlib import Path

from neftc.errors import ModelFileError, UntrustedModelError
from neftc.frontend.model_file import RECOPY, REEXPORT, first_line

# the globals a torch.save of plain tensors in tuples, lists and dicts refers to
_PLAIN_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"),
                         ("torch._utils", "_rebuild_tensor"),
                         ("collections", "OrderedDict")} | {
    ("torch", f"{kind}Storage") for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                             "Short", "Char", "Byte", "Bool", "ComplexFloat",
                                             "ComplexDouble")}
_PLAIN_PICKLE_OPS = {
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "INT", "BININT", "BININT1",
    "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "EMPTY_LIST", "APPEND", "APPENDS",
    "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM",
    "SETITEMS", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "GLOBAL", "REDUCE", "BINPERSID",
}


def check_plain_tensor_pickle(path: Path, name: str, data: bytes) -> None:
    """Read (never run) the pickle of a torch.save file: refuse it unless it only rebuilds
    tensors in tuples, lists and dicts, as torch.export.save writes the sample inputs."""
    if not data:
        return

    def refuse(why: str) -> UntrustedModelError:
        return UntrustedModelError(
            f"'{path}': member '{name}' (the sample inputs) {why}, and torch would unpickle it, "
            f"running code from the file; {REEXPORT}")

    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in inner.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise refuse("is not a torch.save file holding one pickle")
        stream = inner.read(pickles[0])
    except zipfile.BadZipFile:
        raise refuse("is a bare pickle stream, not the torch.save archive torch writes") from None
    except (OSError, ValueError, EOFError, zlib.error, RuntimeError) as exc:
        raise ModelFileError(f"'{path}' is damaged: member '{name}' cannot be read "
                             f"({first_line(exc)}); {RECOPY}") from None
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name not in _PLAIN_PICKLE_OPS:
                raise refuse(f"uses pickle opcode {opcode.name}, which builds arbitrary objects")
            if opcode.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                if (module, attr) not in _PLAIN_TENSOR_GLOBALS:
                    raise refuse(f"calls {module}.{attr}, not a tensor constructor")
    except UntrustedModelError:
        raise
    except Exception as exc:
        raise refuse(f"is not a well-formed pickle ({first_line(exc)})") from None
