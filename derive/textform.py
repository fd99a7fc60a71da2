r"""Plain text (Unicode) of the LaTeX that :mod:`derive.latex` prints, for terminals: ``dlmath derive
--format text``.

A real reader of the printer's LaTeX subset, not a chain of regular expressions: the text is tokenised
(commands, groups, scripts) and each construct has one rendering, so ``\leq`` never turns into ``≤q`` and a
fraction inside a subscript stays a fraction. ``\frac{1}{10}`` prints as ``1/10``, ``x^{(i)}`` as
``x^(i)``, ``W^{[2]\top}`` as ``W^[2]ᵀ``, ``\hat{y}`` as ``ŷ``, ``\mathbf{1}\{z > 0\}`` as ``1{z > 0}``,
matrices as ``[a, b; c, d]``. A command outside the subset prints as its name (and :func:`unknown` lists
them, which the tests keep empty for every entry of the zoo).
"""

from __future__ import annotations

__all__ = ["to_text", "unknown"]

_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "iota": "ι", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ",
    "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "upsilon": "υ", "phi": "φ", "chi": "χ", "psi": "ψ",
    "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π",
    "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "ell": "ℓ",
    "odot": "⊙", "oslash": "⊘", "star": "⋆", "cdot": "·", "times": "×", "top": "ᵀ", "le": "≤", "leq": "≤",
    "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠", "dots": "…", "ldots": "…", "cdots": "⋯", "infty": "∞",
    "in": "∈", "partial": "∂", "nabla": "∇", "leftarrow": "←", "to": "→", "sim": "~", "approx": "≈", "pm": "±",
    "sum": "Σ", "prod": "Π", "langle": "⟨", "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "|": "‖",
    "{": "{", "}": "}", ",": " ", ";": " ", ":": " ", "!": "", " ": " ", "quad": "  ", "qquad": "\x01",
    "log": "log", "exp": "exp", "tanh": "tanh", "sin": "sin", "cos": "cos", "max": "max", "min": "min",
    "arg": "arg", "bmod": "mod", "det": "det", "\\": "\n",
}
_ACCENTS = {"hat": "\u0302", "bar": "\u0304", "tilde": "\u0303", "dot": "\u0307", "ddot": "\u0308", "check": "\u030c",
            # the directions of a bidirectional RNN (7.14)
            "overrightarrow": "\u20d7", "overleftarrow": "\u20d6"}
_FONTS = {"mathbf", "mathrm", "operatorname", "text", "mathcal", "boldsymbol", "textbf", "mathit", "mathbb"}
_CALLIGRAPHIC = {"C": "𝒞", "U": "𝒰", "N": "𝒩", "D": "𝒟", "L": "ℒ"}
_SUP = str.maketrans("0123456789+-()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ⁿ")

_unknown: set[str] = set()


def unknown() -> set[str]:
    """Commands met by :func:`to_text` that it has no rendering for (since the last call)."""
    out = set(_unknown)
    _unknown.clear()
    return out


class _Reader:
    def __init__(self, s: str):
        self.s, self.i = s, 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def command(self) -> str:
        """After a backslash: the command name (letters, or one symbol)."""
        j = self.i
        while j < len(self.s) and self.s[j].isalpha():
            j += 1
        if j == self.i:
            j = self.i + 1
        name = self.s[self.i : j]
        self.i = j
        return name

    def skip_space(self) -> None:
        while self.peek() == " ":
            self.i += 1

    def argument(self) -> str:
        """One argument: a brace group, a command or one character, rendered."""
        self.skip_space()
        c = self.peek()
        if c == "{":
            return self.group()
        if c == "\\":
            self.i += 1
            return self.cmd(self.command())
        self.i += 1
        return c

    def raw_group(self) -> str:
        """The text of a brace group, unrendered."""
        self.skip_space()
        if self.peek() != "{":
            return ""
        depth, j = 0, self.i
        while j < len(self.s):
            depth += {"{": 1, "}": -1}.get(self.s[j], 0)
            if depth == 0:
                break
            j += 1
        out = self.s[self.i + 1 : j]
        self.i = j + 1
        return out

    def group(self) -> str:
        return to_text_raw(self.raw_group())

    def until(self, stop: str) -> str:
        """Render up to the command ``stop`` (e.g. ``\\right``), consuming it."""
        out: list[str] = []
        while self.i < len(self.s):
            if self.s.startswith("\\" + stop, self.i) and not self.s[self.i + len(stop) + 1 : self.i + len(stop) + 2].isalpha():
                self.i += len(stop) + 1
                return "".join(out)
            out.append(self.item())
        return "".join(out)

    def cmd(self, name: str) -> str:
        if name == "langle":
            self.skip_space()  # ⟨t⟩, not ⟨ t⟩
        if name in _SYMBOLS:
            return _SYMBOLS[name]
        if name in _ACCENTS:
            body = self.argument()
            return body + _ACCENTS[name] if len(body) == 1 else f"{body}{_ACCENTS[name]}"
        if name == "mathcal":
            body = self.argument()
            return _CALLIGRAPHIC.get(body, body)
        if name in _FONTS:
            return self.argument()
        if name == "frac":
            a, b = self.argument(), self.argument()
            return f"{_wrap(a)}/{_wrap(b)}"
        if name == "sqrt":
            return f"√{_wrap(self.argument(), always=True)}"
        if name in ("left", "right", "big", "Big", "bigl", "bigr"):
            self.skip_space()
            c = self.peek()
            if c == "\\":
                self.i += 1
                d = self.command()
                return {"{": "{", "}": "}", "|": "‖", "langle": "⟨", "rangle": "⟩"}.get(d, "")
            self.i += 1
            return "" if c == "." else c
        if name == "begin":
            env = self.raw_group()
            if env == "aligned" and self.peek() == "[":
                self.i = self.s.index("]", self.i) + 1
            body = self.until("end")
            self.raw_group()
            if env in ("pmatrix", "bmatrix", "matrix"):
                rows = [r.strip() for r in body.split("\n")]
                return "[" + "; ".join(", ".join(c.strip() for c in r.split("\x02")) for r in rows) + "]"
            return body.replace("\x02", "")
        if name == "textbf":
            return self.argument()
        _unknown.add(name)
        return name

    def item(self) -> str:
        c = self.peek()
        if c == "\\":
            self.i += 1
            name = self.command()
            if name == "\\" and self.peek() == "[":  # a row break with a skip, \\[4pt]
                self.i = self.s.index("]", self.i) + 1
            return self.cmd(name)
        if c == "{":
            return self.group()
        if c in "^_":
            self.i += 1
            arg = self.argument()
            if c == "^" and arg == "ᵀ":
                return "ᵀ"
            if c == "^" and arg.endswith("ᵀ") and len(arg) > 1:
                return f"^{_wrap(arg[:-1])}ᵀ"
            if c == "^" and arg.isdigit() and len(arg) <= 2:
                return arg.translate(_SUP)
            return c + _wrap(arg)
        if c == "&":
            self.i += 1
            return "\x02"  # a cell or alignment mark: a matrix separates its cells by it
        self.i += 1
        return c


def _wrap(s: str, always: bool = False) -> str:
    """``s`` as one unit: parenthesised unless it is a single symbol or already bracketed."""
    s = s.strip()
    if not always and (len(s) <= 1 or (len(s) == 2 and not s[1].isalnum()) or s.isalnum()):
        return s
    if s[:1] in "([⟨" and _closes_at_end(s):
        return s
    return f"({s})"


def _closes_at_end(s: str) -> bool:
    pairs = {"(": ")", "[": "]", "⟨": "⟩"}
    close = pairs[s[0]]
    depth = 0
    for k, c in enumerate(s):
        if c in pairs:
            depth += 1
        elif c in pairs.values():
            depth -= 1
            if depth == 0:
                return k == len(s) - 1 and c == close
    return False


def to_text_raw(s: str) -> str:
    r = _Reader(s)
    out = []
    while r.i < len(s):
        out.append(r.item())
    return "".join(out)


def to_text(tex: str) -> str:
    """A plain-text (Unicode) rendering of the LaTeX that this package prints."""
    out = to_text_raw(tex).replace("\x02", "")
    lines = (" ".join(line.split()).replace(" \x01", "\x01").replace("\x01", ",   ") for line in out.split("\n"))
    return "\n".join(line for line in lines if line.strip())
