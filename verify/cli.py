"""The ``dlmath`` command line: list, derive, backprop, hessian, trace, codegen, verify, bench.

Every command exits non-zero on bad input (2) or a verification mismatch (1), with a one-line message
that says what to fix.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import derive
import numeric

# verify.check (PyTorch, hypothesis) is imported by the commands that run kernels: the symbolic commands
# (list, derive, backprop, hessian, codegen) start without PyTorch

__all__ = ["main", "detex"]


class UsageError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the CLI's form: one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-O key=value`` pairs: a value is read as a Python literal (``ast.literal_eval``: numbers, strings,
    tuples, ``True``), never evaluated; anything else stays text, which the entry's option spec then refuses
    or accepts (``-O activation=relu``)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"option {p!r} should look like key=value (e.g. -O slope=0.1)")
        k, v = p.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise UsageError(f"option {p!r}: {k!r} is not an option name (e.g. -O slope=0.1)")
        if k in out:
            raise UsageError(f"option {k} is given twice")
        try:
            out[k] = ast.literal_eval(v.strip())  # literals only: numbers, strings, lists
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[k] = v
    return out


def _declarations(pairs: Sequence[str]) -> dict[str, str]:
    """``-V x=vector(n)`` pairs -> ``{"x": "vector(n)"}`` (the type strings are read by :func:`derive.parse`)."""
    out: dict[str, str] = {}
    for p in pairs:
        name, sep, typ = p.partition("=")
        name, typ = name.strip(), typ.strip()
        if not sep or not name or not typ:
            raise UsageError(f"-V {p!r} should look like name=type, e.g. -V x=vector(n) or -V A=matrix(n,p)")
        if name in out:
            raise UsageError(f"-V declares {name} twice")
        out[name] = typ
    return out


def _model(args: argparse.Namespace) -> derive.Model:
    """The MODEL argument, resolved in one place: a zoo entry (``-O`` options), or an expression of the
    language of :func:`derive.parse` with ``-V name=type`` declarations (``--wrt``: the variables to
    differentiate). A text that is not a Python identifier, or any ``-V``, makes it an expression.
    ``--torch MODULE:FACTORY`` instead: ``FACTORY()`` returns ``(module_or_function, example_args)``, captured
    by :func:`derive.from_torch` (MODULE found in the working folder first, as ``--impl``'s)."""
    torch_spec = getattr(args, "torch", None)
    if torch_spec is not None:
        if args.model != torch_spec:
            raise UsageError("give a MODEL or --torch MODULE:FACTORY, not both")
        if getattr(args, "var", None) or getattr(args, "option", None):
            raise UsageError("--torch takes no -V declarations or -O options: the factory builds the module")
        module, mod, fn = _import_from_cwd("--torch", torch_spec, "MODULE:FACTORY (e.g. mylayers:make_mlp, with "
                                           "mylayers.py in the working folder and make_mlp() returning (module, "
                                           "example_args))")
        factory = getattr(module, fn, None)
        if not callable(factory):
            raise UsageError(f"--torch {torch_spec!r}: {mod} has no function {fn!r}" if factory is None else
                             f"--torch {torch_spec!r}: {mod}.{fn} is not callable")
        try:
            made = factory()
        except Exception as e:  # noqa: BLE001 - the user's factory failed: one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise UsageError(f"--torch {torch_spec!r}: {fn}() raised {type(e).__name__}: {first}") from None
        if not (isinstance(made, tuple) and len(made) == 2 and callable(made[0])):
            raise UsageError(f"--torch {torch_spec!r}: {fn}() should return (module_or_function, example_args), got "
                             f"{type(made).__name__}")
        obj, example = made
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
        return derive.from_torch(obj, *example)
    spec = args.model
    if spec is None:
        raise UsageError("give a MODEL (a zoo entry, see `dlmath list`, or an expression) or --torch MODULE:FACTORY")
    decls = getattr(args, "var", None) or []
    if decls or not spec.isidentifier():
        if getattr(args, "option", None):
            raise UsageError("-O options are for zoo entries; an expression takes -V name=type declarations")
        if not spec.strip():
            raise UsageError("MODEL is empty: give a zoo entry (see `dlmath list`) or an expression")
        return derive.parse(spec, wrt=getattr(args, "wrt", None) or None, **_declarations(decls))
    if spec not in derive.models.names():
        try:
            derive.models.get(spec)
        except derive.ModelError as e:  # its message lists the known entries
            raise UsageError(f"{e} (an expression declares its variables: -V name=type)") from None
    return derive.models.get(spec, **_options(args.option or []))


def _add_model_args(s: argparse.ArgumentParser, required: bool = True) -> None:
    """The MODEL argument and the flags that qualify it (the same for every command that takes a model).
    ``--torch MODULE:FACTORY`` stands in for MODEL (so MODEL is optional on the command line; :func:`_model`
    says when neither is given)."""

    class _Model(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            if values is None and getattr(ns, "torch", None) is not None:
                return  # MODEL absent: --torch names the model
            setattr(ns, self.dest, values)

    class _Torch(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            setattr(ns, self.dest, values)
            if getattr(ns, "model", None) is None:
                ns.model = values

    del required  # MODEL or --torch: checked by _model, which every command calls
    s.add_argument("model", nargs="?", metavar="MODEL", action=_Model,
                   help="a zoo entry (see `dlmath list`), or an expression such as \"x'*A*x\" with -V declarations")
    s.add_argument("--torch", metavar="MODULE:FACTORY", action=_Torch, default=None,
                   help="your PyTorch code instead of MODEL: FACTORY() in MODULE (found in the working folder) returns "
                   "(module_or_function, example_args), captured by derive.from_torch")
    s.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                   help="zoo entry option, e.g. -O slope=0.1 (repeatable)")
    s.add_argument("-V", "--var", action="append", metavar="NAME=TYPE",
                   help="an expression's variable and its type: scalar, vector(n), matrix(n,p) or spd(n) "
                   "(repeatable)")


def detex(s: str) -> str:
    """A plain-text rendering of the LaTeX this package prints (for terminals): read by the LaTeX reader of
    :mod:`derive.textform`, not rewritten by regular expressions."""
    from derive.textform import to_text

    return to_text(s)


def _layers(m: derive.Model, args: argparse.Namespace) -> int | None:
    L = m.options.get("layers")
    return L if isinstance(L, int) and not getattr(args, "unfold", False) else None


def _show(texs: Sequence[str], fmt: str) -> None:
    for tex in texs:
        print(tex if fmt == "latex" else detex(tex))


#: the widest ``dlmath list`` prints without ``--wide``
LIST_WIDTH = 100


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> None:
    """Print ``rows`` under ``head`` in aligned columns; with ``width``, the last column is cut to fit."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths)]
        last = r[-1]
        if width is not None:
            room = width - sum(len(c) + 2 for c in cells)
            if len(last) > room:
                last = last[: max(room - 1, 0)] + "…"
        print("  ".join([*cells, last]).rstrip())


def _print_eqs(eqs: Sequence[derive.Equation], fmt: str, batch: bool = False, layers: int | None = None,
               model: derive.Model | None = None) -> None:
    from derive.latex import program_tex

    _show(program_tex(eqs, batch, layers, model=model), fmt)


def _print_constants(m: derive.Model, fmt: str) -> None:
    """The hyperparameters' values, listed once under the equations."""
    from derive.latex import constants_tex

    c = constants_tex(m)
    if c:
        _show([r"\text{with } " + c], fmt)


def cmd_list(args: argparse.Namespace) -> int:
    names = derive.models.names()
    if not args.wide:  # from the registry: builds no model (fast)
        rows = [(name, *derive.models.about(name)) for name in names]
        _table(("entry", "book", "title"), rows, width=LIST_WIDTH)
        return 0
    wide = []
    for name in names:
        m = derive.models.get(name)
        opts = derive.models.options(name)
        wide.append((name, m.section, ", ".join(m.params) or "-", ", ".join(m.inputs) or "-",
                     ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "-", m.title))
    _table(("entry", "book", "params", "inputs", "options", "title"), wide)
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    from derive.latex import init_tex, jacobian_tex, newton_tex

    m = _model(args)
    fmt = args.format
    print(f"% {m.name} ({m.section}): {m.title}" if fmt == "latex" else f"# {m.name} ({m.section}): {m.title}")
    L = _layers(m, args)
    _print_eqs(m.equations, fmt, layers=L, model=m)
    if getattr(args, "init", False):
        if not any(n.startswith("W") for n in m.params):
            raise UsageError(f"--init: {m.name} has no weight matrices to initialise")
        _show(init_tex(m), fmt)
    if m.is_update:  # an optimizer: its update is the whole derivation
        if args.wrt or args.batch:
            raise UsageError(f"{m.name} is an update rule (state in, next state out): it has no gradient to "
                             "derive; drop --wrt/--batch")
        _print_constants(m, fmt)
        return 0
    if args.wrt:
        eqs = [derive.grad(m, w) for w in args.wrt]
        adj = [e for e in derive.backprop(m) if e.kind == "adjoint"]
        _print_eqs(adj + eqs, fmt, args.batch, L, model=m)
    else:
        _print_eqs(derive.backprop(m), fmt, args.batch, L, model=m)
    if m.scan is not None:
        _show(jacobian_tex(m), fmt)
    if m.newton:
        _show(newton_tex(m), fmt)
    _print_constants(m, fmt)
    return 0


def cmd_backprop(args: argparse.Namespace) -> int:
    m = _model(args)
    if m.is_update:
        raise UsageError(f"{m.name} is an update rule (state in, next state out) and has no backpropagation; "
                         f"print it with `dlmath derive {m.name}`")
    _print_eqs(derive.backprop(m), args.format, args.batch, _layers(m, args), model=m)
    _print_constants(m, args.format)
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    m = _model(args)
    wrt = args.wrt or (list(m.hessian_wrt[:1]) or list(m.params)[:1])
    if len(wrt) > 2:  # a block has two parameters: a third --wrt is refused, not ignored
        raise UsageError(f"--wrt names one parameter (a diagonal block) or two (a cross block), got {len(wrt)}: "
                         f"{', '.join(wrt)}")
    eqs = derive.hessian(m, wrt[0], wrt[1] if len(wrt) > 1 else None)
    _print_eqs(eqs, args.format, args.batch, model=m)
    _print_constants(m, args.format)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    import numpy as np

    m = _model(args)
    arrays: dict[str, Any] = {}
    for a in args.at or []:
        k, _, v = a.partition("=")
        try:
            arrays[k] = np.array([float(x) for x in v.split(",")]) if "," in v else np.array(float(v))
        except ValueError:
            raise UsageError(f"--at {a!r}: give name=v1,v2,... with numbers") from None
    if not arrays and m.name == "autodiff_example":
        arrays = {"theta": np.array([1.0, 2.0, 0.5])}
    for mode in ("forward", "reverse"):
        print(f"{mode} mode:")
        vals = numeric.trace(m, mode, **arrays)
        for k, v in vals.items():
            print(f"  {k:>10s} = {np.array2string(np.asarray(v), precision=6)}")
    return 0


def _output_path(path: str) -> str:
    """``-o FILE`` checked before anything is generated: a file name, in a folder that exists."""
    import os

    if not path.strip():
        raise UsageError("-o needs a file name (e.g. -o kernel.py); leave -o out to print to standard output")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise UsageError(f"-o {path!r} is a folder; give a file name (e.g. -o {os.path.join(path, 'kernel.py')})")
    folder = os.path.dirname(path) or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"-o {path!r}: {folder!r} is a file, not a folder; give a path in a folder")
    if not os.path.isdir(folder):
        raise UsageError(f"-o {path!r}: the folder {folder!r} does not exist; create it first")
    return path


def cmd_codegen(args: argparse.Namespace) -> int:
    out = _output_path(args.output) if args.output is not None else None
    m = _model(args)
    src = numeric.source(m, args.backend, hessian=args.hessian or ())
    if out is not None:
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(src)
        except OSError as e:
            raise UsageError(f"-o {out!r}: cannot write it ({e.strerror or e})") from None
        print(f"wrote {out}")
    else:
        print(src, end="")
    return 0


def _import_from_cwd(flag: str, spec: str, form: str) -> tuple[Any, str, str]:
    """``(module, module name, attribute name)`` for ``spec`` = ``module:name`` given to ``flag``, the module
    found in the working folder first (``mymodule.py`` next to where dlmath runs), then on the path; every
    failure is a one-line :class:`UsageError` (``form`` says what the spec should look like)."""
    import os

    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not all(p.isidentifier() for p in mod.split(".")) or not fn.isidentifier():
        raise UsageError(f"{flag} {spec!r} should look like {form}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise UsageError(f"{flag} {spec!r}: cannot import {mod!r} ({e}); put {mod.replace('.', '/')}.py in the "
                         f"working folder ({cwd}) or install it") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so in one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise UsageError(f"{flag} {spec!r}: importing {mod} raised {type(e).__name__}: {first}") from None
    return module, mod, fn


def _load_impl(spec: str) -> Callable[..., Any]:
    """``module:function`` (or ``module:Class`` for an ``nn.Module`` class or a ``torch.autograd.Function``),
    the module found in the working folder first (``mymodule.py`` next to where dlmath runs), then on the
    path."""
    module, mod, fn = _import_from_cwd("--impl", spec, "module:function (e.g. mylayers:relu_layer, with "
                                       "mylayers.py in the working folder)")
    try:
        obj = getattr(module, fn)
    except AttributeError:
        raise UsageError(f"--impl {spec!r}: {mod} has no {fn!r}") from None
    if not callable(obj):
        raise UsageError(f"--impl {spec!r} is not callable")
    return _instantiate(obj)  # type: ignore[no-any-return]


def _instantiate(obj: Any) -> Any:
    """An ``nn.Module`` subclass named on the command line is instantiated (its parameters are replaced by the
    example's); functions and ``autograd.Function`` classes are used as they are."""
    if isinstance(obj, type):
        import torch

        if issubclass(obj, torch.nn.Module):
            try:
                return obj()
            except TypeError as e:
                raise UsageError(f"--impl: {obj.__name__}() needs arguments ({e}); name a factory function that "
                                 "returns the module instead") from None
    return obj


def _names(pairs: Sequence[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k or not v:
            raise UsageError(f"{flag} {p!r} should look like DLMATH_NAME=YOURS (e.g. {flag} W=weight)")
        out[k] = v
    return out


def _verify_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    opts = _options(args.option or [])
    if args.all:  # -O applies to the entries that have the option
        opts = {k: v for k, v in opts.items() if k in derive.models.options(name)}
    if args.targets:
        known = derive.models.options(name)
        if "targets" in known:
            opts["targets"] = args.targets
        elif not args.all:
            raise UsageError(f"--targets: {name} has no categorical target (entries with one: "
                             f"{', '.join(n for n in derive.models.names() if 'targets' in derive.models.options(n))})")
    return opts


def _single(args: argparse.Namespace) -> derive.Model:
    """The one MODEL of ``dlmath verify``: an expression, or a zoo entry with -O options and --targets."""
    if args.targets and not (getattr(args, "var", None) or not args.model.isidentifier()):
        if "targets" not in derive.models.options(args.model):
            _verify_options(args.model, args)  # raises the one-line error listing the entries with targets
        args.option = [*(args.option or []), f"targets={args.targets}"]
    return _model(args)


#: the most examples ``dlmath verify --examples`` runs per entry (more would run for days, not find more)
MAX_EXAMPLES = 100_000


def cmd_verify(args: argparse.Namespace) -> int:
    import time

    from .check import Mismatch, check

    if args.all == bool(args.model):
        raise UsageError("give one MODEL or --all")
    if args.rtol is not None and not 0 < args.rtol < 1:
        raise UsageError(f"--rtol must be in (0, 1), got {args.rtol}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    if args.examples > MAX_EXAMPLES:
        raise UsageError(f"--examples must be at most {MAX_EXAMPLES}, got {args.examples}")
    names = derive.models.names() if args.all else [args.model]
    if args.all and args.var:
        raise UsageError("--all checks the zoo entries: -V declares an expression's variables; drop it")
    impl = _load_impl(args.impl) if args.impl else None
    if args.all:
        # -O applies to every entry that has the option (checked against each one's spec when built)
        given = _options(args.option or [])
        unused = set(given) - {k for n in names for k in derive.models.options(n)}
        if unused:
            raise UsageError(f"no zoo entry has the option {', '.join(sorted(unused))}")
        for n in names:  # a value an entry refuses is bad input now, not an error row per entry later
            specs = derive.models.spec(n)
            for k, v in given.items():
                if k in specs:
                    specs[k].check(n, k, v)  # OptionError / OptionTypeError: exit 2 with its one line
    values = tuple(v.strip() for v in args.values.split(",")) if args.values else None
    kw: dict[str, Any] = {"names": _names(args.name, "--name") or None,
                          "layouts": _names(args.layout, "--layout") or None}
    if (args.name or args.layout) and not args.impl:
        raise UsageError(f"{'--name' if args.name else '--layout'} describes your implementation: give it with "
                         f"--impl MODULE:FUNCTION (or drop the flag)")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    failed = 0
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        if args.all:
            print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"model": name}
        try:
            m = derive.models.get(name, **_verify_options(name, args)) if args.all else _single(args)
            rep = check(m, implementation=impl, backend=args.backend, device=args.device, examples=args.examples,
                        rtol=args.rtol, seed=args.seed, values=values, kinks=args.kinks, **kw)
        except Mismatch as e:
            failed += 1
            row.update(status="failed", message=str(e), failures=[f.as_dict() for f in e.failures],
                       reproduce=e.reproduce, diagnosis=e.diagnosis)
            print(f"FAIL {e}", file=sys.stderr)
        except (derive.ModelError, ValueError, TypeError) as e:
            if not args.all:
                raise
            failed += 1
            row.update(status="error", message=f"{type(e).__name__}: {e}")
            print(f"ERROR {name}: {e}", file=sys.stderr)
        else:
            row.update(status="passed", examples=rep.examples, checks=rep.checks, reference=rep.reference,
                       values=list(rep.modes), seed=rep.seed, notes=rep.notes)
            print(rep, flush=True)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if args.all:
            print(f"[{i}/{len(names)}] {name} {row['status']} ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    total = time.perf_counter() - start
    passed = sum(r["status"] == "passed" for r in rows)
    if args.all or len(rows) > 1:
        bad = ", ".join(r["model"] for r in rows if r["status"] != "passed")
        print(f"dlmath verify: {passed} passed, {failed} failed{' (' + bad + ')' if bad else ''} in {total:.1f} s",
              file=sys.stderr)
    if args.json:
        _write_json(args.json, rows, total)
    if args.junit:
        _write_junit(args.junit, rows, total)
    return 1 if failed else 0


def _write_json(path: str, rows: list[dict[str, Any]], total: float) -> None:
    import json

    doc = {"passed": sum(r["status"] == "passed" for r in rows), "failed": sum(r["status"] != "passed" for r in rows),
           "seconds": round(total, 3), "results": rows}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
    except OSError as e:
        raise UsageError(f"--json {path!r}: {e.strerror}") from None


def _write_junit(path: str, rows: list[dict[str, Any]], total: float) -> None:
    """A JUnit XML report (one testsuite, one testcase per entry) for CI systems."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="dlmath verify", tests=str(len(rows)),
                       failures=str(sum(r["status"] == "failed" for r in rows)),
                       errors=str(sum(r["status"] == "error" for r in rows)), time=f"{total:.3f}")
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname="dlmath.verify", name=r["model"], time=f"{r['seconds']:.3f}")
        if r["status"] != "passed":
            msg = r["message"]
            el = ET.SubElement(case, "failure" if r["status"] == "failed" else "error",
                               message=msg.splitlines()[0][:500], type="Mismatch" if r["status"] == "failed" else "Error")
            el.text = msg
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{r['examples']} examples passed; values {', '.join(r['values'])}; seed {r['seed']}"
    try:
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as e:
        raise UsageError(f"--junit {path!r}: {e.strerror}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from numeric import bench

    return int(bench.main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    from dlmath import __version__

    p: argparse.ArgumentParser = _Parser(prog="dlmath", description="The mathematics of deep learning: derive, print, "
                                "generate and verify (after Liquet, Moka & Nazarathy).")
    p.add_argument("--version", action="version", version=f"dlmath {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        _add_model_args(s)
        return s

    s = sub.add_parser("list", help="list the zoo entries", description="List the zoo entries: name, book "
                       f"section and title, in at most {LIST_WIDTH} columns.")
    s.add_argument("--wide", action="store_true", help="also the parameters, inputs and options of every entry "
                   "(builds every model: slower)")
    s.set_defaults(func=cmd_list)
    s = model_cmd("derive", "print a model's equations and its gradients")
    s.add_argument("--wrt", action="append", metavar="P", help="gradient with respect to P (repeatable)")
    s.add_argument("--unfold", action="store_true", help="print every layer's equations (no symbolic layer index)")
    s.add_argument("--format", choices=("latex", "text"), default="latex")
    s.add_argument("--batch", action="store_true", help="print gradients in batch (matrix) form")
    s.add_argument("--init", action="store_true", help="also print the initialisation variances (§5.5)")
    s.set_defaults(func=cmd_derive)
    s = model_cmd("backprop", "print the backpropagation (adjoint) equations")
    s.add_argument("--unfold", action="store_true", help="print every layer's equations (no symbolic layer index)")
    s.add_argument("--format", choices=("latex", "text"), default="latex")
    s.add_argument("--batch", action="store_true", help="print gradients in batch (matrix) form")
    s.set_defaults(func=cmd_backprop)
    s = model_cmd("hessian", "print a Hessian block, derived by forward mode over the adjoint program")
    s.add_argument("--wrt", action="append", metavar="P", help="parameter (twice for a cross block)")
    s.add_argument("--format", choices=("latex", "text"), default="latex")
    s.add_argument("--batch", action="store_true", help="print in batch (matrix) form, e.g. X^T D X / n")
    s.set_defaults(func=cmd_hessian)
    s = model_cmd("trace", "evaluate the forward-mode and reverse-mode traces of a model")
    s.add_argument("--at", action="append", metavar="NAME=V1,V2", help="array values (default for "
                   "autodiff_example: theta=1,2,0.5)")
    s.set_defaults(func=cmd_trace)
    s = model_cmd("codegen", "print the generated kernel module")
    s.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    s.add_argument("--hessian", action="append", metavar="P", help="also compute the Hessian in P")
    s.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    s.add_argument("--wrt", action="append", metavar="X", help="an expression's variable to differentiate "
                   "(repeatable; default: all)")
    s.set_defaults(func=cmd_codegen)
    s = sub.add_parser("verify", help="verify generated kernels (and an implementation) against PyTorch",
                       description="Verify generated kernels, and optionally your implementation, against "
                       "torch autograd on hypothesis-drawn examples.")
    _add_model_args(s, required=False)
    s.add_argument("--all", action="store_true", help="every zoo entry")
    s.add_argument("--wrt", action="append", metavar="X", help="an expression's variable to differentiate "
                   "(repeatable; default: all)")
    s.add_argument("--impl", metavar="MODULE:FUNCTION", help="your implementation f(**arrays) -> "
                   "{'loss', 'grad'} (or an nn.Module / autograd.Function); MODULE.py is found in the working folder")
    s.add_argument("--backend", choices=("numpy", "torch"), default="torch")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--examples", type=int, default=50)
    s.add_argument("--rtol", type=float, default=None, help="relative tolerance for everything (default: 1e-10 "
                   "for float64, the result's own precision's tolerance for a lower-precision implementation)")
    s.add_argument("--seed", type=int, default=None, help="draw other examples (default: the same every run: "
                   "0, or DLMATH_SEED)")
    s.add_argument("--targets", choices=("probabilities", "one_hot", "labels"), help="the categorical targets "
                   "of the entries that have them")
    s.add_argument("--values", metavar="MODES", help="value modes to draw, comma-separated: normal, small, large, "
                   "kinks")
    s.add_argument("--kinks", choices=("torch", "any"), default="torch", help="at kinks and ties: PyTorch's "
                   "one-sided convention (default) or either one-sided derivative")
    s.add_argument("--name", action="append", metavar="OURS=YOURS", help="map a dlmath name onto your "
                   "implementation's keyword and result key, e.g. --name W=weight (repeatable)")
    s.add_argument("--layout", action="append", metavar="NAME=AXES", help="how your implementation stores a "
                   "tensor, e.g. --layout W=in,out (repeatable)")
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    s.add_argument("--junit", metavar="FILE", help="also write a JUnit XML testsuite (for CI)")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("bench", help="run the benchmarks (ratios measured side by side)",
                       description="Run the benchmarks; arguments are passed on (try --help after --).")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status: 0, 1 (a verification mismatch), 2 (bad input: one
    line on stderr), 3 (an internal error: one line; ``DLMATH_DEBUG=1`` shows the traceback) or 130
    (interrupted by Ctrl-C: one line, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        return _run(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT, no traceback
        print(f"dlmath{' ' + command if command.isidentifier() else ''}: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str]) -> int:
    import os

    if argv[:1] == ["bench"] and not ({"-h", "--help"} & set(argv[1:2])):
        from numeric import bench  # its own options (--quick, --only ...) go to it unparsed

        return int(bench.main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader (e.g. `head`) closed the pipe: not an error of ours
        return 0
    except (UsageError, derive.ModelError, derive.ShapeError, derive.UnsupportedError, numeric.InputError,
            ValueError, TypeError) as e:
        text = " ".join(str(e).split("\n")[:1]) or type(e).__name__
        print(f"dlmath {args.command}: error: {text}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line, not a traceback from inside SymPy or torch
        if os.environ.get("DLMATH_DEBUG"):
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"dlmath {args.command}: internal error: {type(e).__name__}: {first} (a bug in dlmath; please "
              f"report it with the command; DLMATH_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
