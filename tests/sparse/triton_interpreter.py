"""Run prunekit's Triton kernels on the CPU through Triton's interpreter, inside an ordinary pytest process.

TRITON_INTERPRET=1 makes `@triton.jit` build interpreted functions, but only for code imported after it is set,
and it would turn the compile tests (tests/sparse/test_kernels_compile.py) into no-ops: the two could not run in
one `python -m pytest` process. Instead, inside `interpreted(...)`, every jitted function — the kernels, their
@triton.jit helpers and triton.language's own (tl.zeros, tl.sum's combine function, ...) — is swapped for
`InterpretedFunction(jitted.fn)`, which is what TRITON_INTERPRET=1 would have built, and the interpreter knob is
set. On exit everything is put back, including what the interpreter itself leaves behind (Triton 3.6):
  - a nested @triton.jit call patches triton.language (tensor operators, dtype.to_ir, ...) and never restores
    it, which breaks the next compilation in the process ("ir.value has no attribute dtype"): every attribute
    the interpreter patches gets back the value it had before the block;
  - running a function copies the interpreter's globals into the function's module: the added names go, and
    with them the interpreter's cached rewrites of those functions (submodules imported meanwhile stay: deleting
    `triton.language.extra.libdevice` from its package broke every later torch.compile in the process).
Also patched, for Triton 3.6 under NumPy ≥ 2.4: the interpreter holds a scalar as a 1-element array and turns it
into an index with `int(array)`, which NumPy 2.4 refuses for arrays that are not 0-d; kernels whose loop bounds
are computed (`range(start, stop, BLOCK)` in spmm24 and gemv24) fail in the interpreter without it.
"""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def interpreted(*modules: ModuleType):
    """Within the block, the jitted functions of `modules` (and of triton.language) run interpreted."""
    import triton
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    saved: list[tuple[object, str, object]] = []

    def replace(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    originals: dict[tuple[int, str], tuple[object, str, object]] = {}  # what triton.language had before
    set_attr, patch_tensor = interpreter._LangPatchScope.set_attr, interpreter._patch_lang_tensor
    missing = object()

    def set_attr_recorded(scope, obj, name, value):
        originals.setdefault((id(obj), name), (obj, name, getattr(obj, name, missing)))
        set_attr(scope, obj, name, value)

    def patch_tensor_numpy24(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    language = [m for name, m in list(sys.modules.items()) if name.startswith("triton.language") and m is not None]
    namespaces = {id(m): (m, set(vars(m))) for m in [*language, *modules]}
    rewritten = set(interpreter.InterpretedFunction.rewritten_fn)  # cached rewrites rely on the copied globals
    try:
        knobs = contextlib.ExitStack()  # scope(): the knob also writes TRITON_INTERPRET into os.environ
        knobs.enter_context(triton.knobs.runtime.scope())
        triton.knobs.runtime.interpret = True
        replace(interpreter._LangPatchScope, "set_attr", set_attr_recorded)
        replace(interpreter, "_patch_lang_tensor", patch_tensor_numpy24)
        interpreted_fns: dict[int, object] = {}  # one per jitted function, under whichever names it has
        for module, _ in namespaces.values():
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    if id(value) not in interpreted_fns:
                        interpreted_fns[id(value)] = interpreter.InterpretedFunction(value.fn)
                    replace(module, name, interpreted_fns[id(value)])
        yield
    finally:
        knobs.close()
        for obj, name, value in originals.values():  # the first value seen is the compiler's own
            if value is missing:
                if name in vars(obj):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        for module, names in namespaces.values():  # a submodule imported meanwhile stays: sys.modules holds it
            for name in set(vars(module)) - names:
                if not isinstance(vars(module)[name], ModuleType):
                    delattr(module, name)
        for fn in set(interpreter.InterpretedFunction.rewritten_fn) - rewritten:
            del interpreter.InterpretedFunction.rewritten_fn[fn]
