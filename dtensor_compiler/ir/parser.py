"""Reads the textual IR back into a `Module`: the inverse of `printer.print_module`.

``print_module(parse_module(text)) == text`` for every printed module, with or without
locations. Parsing runs in two steps:

1. `grammar.lark` with lark's LALR parser, its contextual lexer and an embedded, stateless
   `_Syntax` transformer turns text into light syntax records (`_FuncSyntax`, `_OpSyntax`)
   whose names are still tokens, so every later complaint can point at a line and column.
   Lark spends its time per token, so the grammar's tokens are long: an op's results with
   their `=` are one DEFINES token and its operand list one VALUES token, which `_names`
   splits (`_place` finds a name's column when something is wrong with it); its `: types` are
   one TYPES token of TYPE pieces, each a tensor type with its layout, and its attribute dict
   one ATTRS token: `_inner_parse` reads a TYPE or ATTRS text with the same parser from the
   grammar's other start symbols, `tensor_type` and `attrs`, once per distinct text
   (`_parse_cached`; the 200-layer transformer of benchmarks/parse_speed.py has 25 distinct
   ones). Complaints found inside such a token are moved to its place in the module
   (`_Fault.moved_into`). Types become `TensorType`s here.
2. `_build_module` resolves names in SSA order (operands must be defined earlier in the same
   function), checks op names against the registry, gives each attribute its definition's
   kind (``[0, 1]`` a tuple of ints, ``sum`` a reduction; a missing attribute with a default
   gets it), turns ``dense<...>`` and ``dense_hex<...>`` into arrays of the op's result dtype,
   and creates `Operation`s with their declared result types. Shape inference, result counts
   and missing attributes are the verifier's business, not the parser's.

The cyclic garbage collector waits while a module is parsed (`collector_paused`). Every
malformed input raises `IRParseError` with a 1-based line and column and the line's text.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, v_args
from lark.exceptions import UnexpectedToken
from lark.lexer import PatternStr

from dtensor_compiler.errors import IRParseError, Location
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.collector import collector_paused
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.reasons import Written
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import (
    DTYPE_NAMES,
    TensorType,
    numpy_dtype,
    unknown_dtype_message,
)

_GRAMMAR_FILE = Path(__file__).with_name("grammar.lark")

_TERMINAL_WORDS = {
    "NAME": "name",
    "VALUE": "%value",
    "VALUES": "%value",
    "DEFINES": "results like '%0 ='",
    "TYPES": "result types like ': f32[4,8]'",
    "LOC": "location like loc(\"f.py\":3)",
    "TENSOR": "tensor type like f32[4,8]",
    "TYPE": "tensor type like f32[4,8]",
    "ATTRS": "attributes like {axis = 1}",
    "INT": "integer",
    "FLOAT": "float",
    "STRING": "quoted string",
    "WHY": "'// why:' comment",
    "_NL": "line break",
    "$END": "end of the text",
}


def parse_module(text: str) -> Module:
    """Parse IR text (as written by `print_module`) into a new `Module`."""
    text = text.replace("\r\n", "\n")  # (a file written on Windows: the same module)
    try:
        with collector_paused():
            syntax = _lark().parse(text, start="start")
            assert isinstance(syntax, _ModuleSyntax)  # the embedded `_Syntax` builds them
            return _build_module(syntax)
    except _Fault as fault:
        raise _error(text, fault.message, fault.line, fault.column) from None
    except UnexpectedInput as e:
        raise _syntax_error(text, e) from None


# ---------------------------------------------------------------------------------------------
# step 1: text -> syntax records


class _Fault(Exception):
    """A problem found at a token; `parse_module` adds the offending line."""

    def __init__(self, message: str, at: Token | tuple[int, int]) -> None:
        super().__init__(message)
        self.message = message
        self.line, self.column = at if isinstance(at, tuple) else (at.line or 1, at.column or 1)

    def moved_into(self, outer: Token) -> _Fault:
        """This fault, found in the text of the token `outer` alone, placed in the module."""
        self.line = outer.line or 1
        self.column = (outer.column or 1) + self.column - 1
        return self


@dataclass(frozen=True, slots=True)
class _Dense:
    """``dense<...>``: nested Python scalars, typed once the op's result dtype is known."""

    value: object
    at: Token


@dataclass(frozen=True, slots=True)
class _DenseHex:
    """``dense_hex<"...">``: raw little-endian bytes of the op's result dtype."""

    hex: str
    at: Token


@dataclass(frozen=True, slots=True)
class _OpSyntax:
    results: Token | None
    """The DEFINES token (`_names` splits it, `_place` finds a name in it); so `operands`."""
    name: Token
    operands: Token | None
    attrs: dict[Token, Attr | _Dense | _DenseHex]
    attrs_at: Token | None
    """The ATTRS token; the positions of `attrs`'s keys and values are within its text."""
    types: tuple[TensorType, ...]
    loc: Location | None
    why: Written | None


@dataclass(frozen=True, slots=True)
class _FuncSyntax:
    name: Token
    args: list[tuple[Token, TensorType]]
    result_types: list[TensorType]
    ops: list[_OpSyntax]
    returned: Token | None
    return_at: Token


@dataclass(frozen=True, slots=True)
class _ModuleSyntax:
    mesh: MeshShape
    localized: bool
    entry: Token | None
    functions: list[_FuncSyntax]


@v_args(inline=True)
class _Syntax(Transformer):
    """Callbacks of the LALR parser. Stateless, so one parser serves every call."""

    def start(self, mesh: tuple[MeshShape, bool, Token | None], *functions: _FuncSyntax
              ) -> _ModuleSyntax:
        return _ModuleSyntax(mesh[0], mesh[1], mesh[2], list(functions))

    def mesh(self, dims: list[tuple[Token, Token]] | None, local: Token | None,
             entry: Token | None) -> tuple[MeshShape, bool, Token | None]:
        seen: set[str] = set()
        for name, size in dims or []:
            if name in seen:
                raise _Fault(f"mesh dim {str(name)!r} appears twice", name)
            if int(size) <= 0:
                raise _Fault(f"mesh dim {str(name)!r} must have a positive size", size)
            seen.add(name)
        shape = MeshShape(tuple((str(name), int(size)) for name, size in dims or []))
        return shape, local is not None, entry

    def entry(self, name: Token) -> Token:
        return name

    def mesh_dims(self, *dims: tuple[Token, Token]) -> list[tuple[Token, Token]]:
        return list(dims)

    def mesh_dim(self, name: Token, size: Token) -> tuple[Token, Token]:
        return name, size

    def func(self, name: Token, args: list[tuple[Token, TensorType]] | None,
             result_types: list[TensorType] | None,
             *body: _OpSyntax | tuple[Token, Token | None]) -> _FuncSyntax:
        *items, ret = body
        assert isinstance(ret, tuple), "the grammar ends a body with its return"
        ops: list[_OpSyntax] = []
        for item in items:
            assert isinstance(item, _OpSyntax), "the grammar has only ops before the return"
            ops.append(item)
        return_at, returned = ret
        return _FuncSyntax(name, args or [], result_types or [], ops, returned, return_at)

    def args(self, *args: tuple[Token, TensorType]) -> list[tuple[Token, TensorType]]:
        return list(args)

    def arg(self, name: Token, t: Token) -> tuple[Token, TensorType]:
        return name, _type(t)

    def types(self, *types: Token) -> list[TensorType]:
        return [_type(t) for t in types]

    def ret(self, at: Token, values: Token | None) -> tuple[Token, Token | None]:
        return at, values

    def result_op(self, defines: Token, name: Token, operands: Token | None,
                  attrs: Token | None, types: Token, loc: Token | None, why: Token | None
                  ) -> _OpSyntax:
        result_types = _result_types(types)
        count = len(_names(defines))
        if count != len(result_types):
            raise _Fault(f"{count} results but {len(result_types)} result types", name)
        return _OpSyntax(defines, name, operands, _attributes(attrs), attrs, result_types,
                         _location(loc), _why(why))

    def effect_op(self, name: Token, operands: Token | None, attrs: Token | None,
                  loc: Token | None, why: Token | None) -> _OpSyntax:
        return _OpSyntax(None, name, operands, _attributes(attrs), attrs, (), _location(loc),
                         _why(why))

    # -- types (the `tensor_type` start symbol, see `_type`) ------------------------------------
    def tensor_type(self, tensor: Token, sharding: Sharding | None, pad: ReduceOp | None
                    ) -> TensorType:
        dtype, dims = tensor[:-1].split("[")
        if dtype not in DTYPE_NAMES:
            raise _Fault(unknown_dtype_message(dtype), tensor)
        parts = [d.partition("/") for d in dims.split(",")] if dims else []
        shape = tuple(int(local) for local, _, _ in parts)
        extents = tuple(int(e) if e else None for _, _, e in parts)
        if sharding is not None and sharding.rank != len(shape):
            raise _Fault(f"layout {sharding.text()} has rank {sharding.rank} but the shape "
                         f"{list(shape)} has rank {len(shape)}", tensor)
        if any(e is not None for e in extents) and sharding is None:
            raise _Fault("a dim with padding (local/global) needs a layout", tensor)
        return TensorType(dtype, shape, sharding,
                          extents if any(e is not None for e in extents) else None, pad)

    def pad(self, name: Token) -> ReduceOp:
        try:
            return ReduceOp.parse(str(name))
        except ValueError as e:
            raise _Fault(f"pad({name}): {e}", name) from None

    def sharding(self, dims: list[tuple[str, ...]] | None,
                 partial: tuple[tuple[str, ReduceOp], ...] | None) -> Sharding:
        return Sharding(tuple(dims or ()), partial or ())

    def shard_dims(self, *dims: tuple[str, ...]) -> list[tuple[str, ...]]:
        return list(dims)

    def unsharded(self) -> tuple[str, ...]:
        return ()

    def one_mesh_dim(self, name: Token) -> tuple[str, ...]:
        return (str(name),)

    def mesh_dim_group(self, *names: Token) -> tuple[str, ...]:
        return tuple(str(n) for n in names)

    def partial(self, *reductions: tuple[str, ReduceOp]) -> tuple[tuple[str, ReduceOp], ...]:
        return reductions

    def reduction(self, mesh_dim: Token, op: Token) -> tuple[str, ReduceOp]:
        try:
            return str(mesh_dim), ReduceOp.parse(str(op))
        except ValueError as e:
            raise _Fault(str(e), op) from None

    # -- attributes (the `attrs` start symbol, see `_attributes`) ------------------------------
    def attrs(self, *items: tuple[Token, Attr | _Dense | _DenseHex]
              ) -> dict[Token, Attr | _Dense | _DenseHex]:
        out: dict[Token, Attr | _Dense | _DenseHex] = {}
        for key, value in items:
            if key in out:
                raise _Fault(f"attribute {str(key)!r} is given twice", key)
            out[key] = value
        return out

    def attr(self, key: Token, value: Attr | _Dense | _DenseHex
             ) -> tuple[Token, Attr | _Dense | _DenseHex]:
        if _depth(value) > MAX_LIST_DEPTH:
            raise _Fault(f"attribute {str(key)!r} nests lists deeper than {MAX_LIST_DEPTH}",
                         key)
        return key, value

    def dense(self, at: Token, value: object) -> _Dense:
        return _Dense(value, at)

    def dense_hex(self, at: Token, data: Token) -> _DenseHex:
        return _DenseHex(_unquote(data), at)

    def int_value(self, tok: Token) -> int:
        return int(tok)

    def float_value(self, tok: Token) -> float:
        return float(tok)

    def inf(self) -> float:
        return math.inf

    def neg_inf(self) -> float:
        return -math.inf

    def nan(self) -> float:
        return math.nan

    def true(self) -> bool:
        return True

    def false(self) -> bool:
        return False

    def bare_string(self, tok: Token) -> str:
        return str(tok)

    def quoted_string(self, tok: Token) -> str:
        return _unquote(tok)

    def list_value(self, *items: Attr) -> tuple:
        return items


MAX_LIST_DEPTH = 32
"""How deep attribute lists may nest (no op has more than two levels; far deeper ones would
overflow the recursion of whatever prints or checks them)."""


def _depth(value: object) -> int:
    """How deep `value` nests lists (0 for a scalar), level by level: no recursion, and no
    further than one past MAX_LIST_DEPTH."""
    depth, level = 0, [value]
    while depth <= MAX_LIST_DEPTH:
        lists = [v for v in level if isinstance(v, tuple)]
        if not lists:
            break
        depth += 1
        level = [item for items in lists for item in items]
    return depth


def _unquote(tok: Token) -> str:
    """The text of a quoted STRING token (JSON's escapes), or a fault at it."""
    try:
        return json.loads(tok)
    except json.JSONDecodeError as e:
        raise _Fault(f"bad string {str(tok)[:40]}: {e.msg}", tok) from None


_VALUE = re.compile(r"%[A-Za-z0-9_]+")


def _names(tok: Token | None) -> list[str]:
    """The value names of a VALUES or DEFINES token (``%0, %w``)."""
    return [] if tok is None else _VALUE.findall(tok)


def _place(tok: Token | None, index: int) -> tuple[int, int]:
    """The line and column of the `index`-th name of a VALUE, VALUES or DEFINES token."""
    assert tok is not None, "only a written name is misplaced"
    start = list(_VALUE.finditer(tok))[index].start()
    assert tok.line is not None and tok.column is not None, "the lexer places every token"
    return tok.line, tok.column + start


def _pieces(tok: Token, pattern: re.Pattern[str]) -> list[Token]:
    """The matches of `pattern` in `tok`'s text, as tokens placed where they stand."""
    column = tok.column or 1
    return [Token(tok.type, m.group(), line=tok.line, column=column + m.start())
            for m in pattern.finditer(tok)]


def _result_types(tok: Token) -> tuple[TensorType, ...]:
    """The `TensorType`s a TYPES token (``: f32[4], i32[]``) spells."""
    try:
        return _types_in(str(tok))
    except _Fault as fault:
        raise fault.moved_into(tok) from None


@functools.lru_cache(maxsize=4096)
def _types_in(text: str) -> tuple[TensorType, ...]:
    pieces = _pieces(Token("TYPES", text, line=1, column=1), _type_pattern())
    return tuple(_type(piece) for piece in pieces)


@functools.cache
def _type_pattern() -> re.Pattern[str]:
    """One TYPE of a TYPES token (the grammar's own terminal)."""
    return re.compile(_lark().get_terminal("TYPE").pattern.to_regexp())


def _location(tok: Token | None) -> Location | None:
    """The `Location` of a LOC token: ``loc("f.py":12)``."""
    if tok is None:
        return None
    file, _, line = tok.lstrip()[len("loc("):-1].rpartition(":")
    quote = (tok.column or 1) + str(tok).index('"')
    return Location(_unquote(Token("STRING", file.strip(), line=tok.line, column=quote)),
                    int(line))


def _why(tok: Token | None) -> Written | None:
    return None if tok is None else Written(tok.lstrip()[len("// why: "):])


def _type(tok: Token) -> TensorType:
    """The `TensorType` a TYPE token spells, read once per distinct text."""
    t = _inner_parse(tok, "tensor_type")
    assert isinstance(t, TensorType)  # the embedded `_Syntax.tensor_type` builds it
    return t


def _attributes(tok: Token | None) -> dict[Token, Attr | _Dense | _DenseHex]:
    """The attributes an ATTRS token spells, read once per distinct text; the tokens in the
    result have positions within that text (`_OpSyntax.attrs_at`)."""
    if tok is None:
        return {}
    attrs = _inner_parse(tok, "attrs")
    assert isinstance(attrs, dict)  # the embedded `_Syntax.attrs` builds it
    return attrs


def _inner_parse(tok: Token, start: str) -> object:
    """`tok`'s text read from the start symbol `start`, complaints placed in the module."""
    try:
        return _parse_cached(str(tok), start)
    except _Fault as fault:
        raise fault.moved_into(tok) from None
    except UnexpectedInput as e:
        message, line, column = _syntax_message(str(tok), e)
        raise _Fault(message, (line, column)).moved_into(tok) from None


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, start: str) -> object:
    """Types and attribute dicts repeat a lot in a module; their values are never mutated."""
    return _lark().parse(text, start=start)


@functools.cache
def _lark() -> Lark:
    return Lark(_GRAMMAR_FILE.read_text(), parser="lalr", transformer=_Syntax(),
                maybe_placeholders=True, start=["start", "tensor_type", "attrs"])


# ---------------------------------------------------------------------------------------------
# step 2: syntax records -> Module


def _build_module(syntax: _ModuleSyntax) -> Module:
    module = Module(syntax.mesh, level=Level.LOCAL if syntax.localized else Level.GLOBAL,
                    entry=None if syntax.entry is None else str(syntax.entry))
    names: set[str] = set()
    for f in syntax.functions:
        if f.name in names:
            raise _Fault(f"function @{f.name} is defined twice", f.name)
        names.add(str(f.name))
        module.functions.append(_build_function(f, module))
    if syntax.entry is not None and syntax.entry not in names:
        raise _Fault(f"the entry @{syntax.entry} is not defined", syntax.entry)
    return module


def _build_function(f: _FuncSyntax, module: Module) -> Function:
    scope: dict[str, Value] = {}

    def define(name: str, value: Value, tok: Token | None, index: int) -> None:
        """`name`, the `index`-th name written in `tok`, now stands for `value`."""
        if name in scope:
            raise _Fault(f"value {name} is defined twice", _place(tok, index))
        scope[name] = value

    def lookup(tok: Token | None) -> list[Value]:
        values = []
        for i, name in enumerate(_names(tok)):
            value = scope.get(name)
            if value is None:
                raise _Fault(f"value {name} is used before it is defined", _place(tok, i))
            values.append(value)
        return values

    args = []
    for at, t in f.args:
        arg = Value(t, name_hint=at[1:])
        define(str(at), arg, at, 0)
        args.append(arg)
    ops = []
    for s in f.ops:
        definition = opdef.find(s.name)
        if definition is None:
            raise _Fault(f"unknown op {str(s.name)!r}", s.name)
        operands = lookup(s.operands)
        try:
            attrs = _attrs(definition, s, module)
        except _Fault as fault:
            assert s.attrs_at is not None, "only a written attribute can be wrong"
            raise fault.moved_into(s.attrs_at) from None
        op = Operation(str(s.name), operands, list(s.types), attrs, s.loc, s.why)
        line, column = s.name.line, s.name.column
        assert line is not None and column is not None, "the lexer places every token"
        op.source = (line, column)
        for i, (name, result) in enumerate(zip(_names(s.results), op.results)):
            define(name, result, s.results, i)
        ops.append(op)
    results = lookup(f.returned)
    if len(results) != len(f.result_types):
        raise _Fault(f"@{f.name} declares {len(f.result_types)} results but returns "
                     f"{len(results)}", f.return_at)
    for i, (value, declared) in enumerate(zip(results, f.result_types)):
        if value.type != declared:
            raise _Fault(f"{_names(f.returned)[i]} has type {value.type.text()} but @{f.name} "
                         f"declares {declared.text()}", _place(f.returned, i))
    return Function(str(f.name), args, ops, results)


def _attrs(definition: opdef.OpDef, s: _OpSyntax, module: Module) -> dict[str, Attr]:
    """The op's attributes with their definition's kinds, defaults filled in; attributes the
    definition does not know are kept as written (the verifier names them)."""
    specs = {a.name: a for a in definition.attrs}
    out: dict[str, Attr] = {}
    for key, raw in s.attrs.items():
        value = _attr_value(raw, s.types[0] if len(s.types) == 1 else None, module)
        spec = specs.get(key)
        if spec is not None:
            try:
                value = spec.coerce(value)
            except ValueError as e:
                raise _Fault(f"{definition.name}: {e}", key) from None
        out[str(key)] = value
    for spec in definition.attrs:
        if spec.name not in out and not spec.required:
            out[spec.name] = spec.coerce(spec.default)
    return out


def _attr_value(value: Attr | _Dense | _DenseHex, result: TensorType | None, module: Module
                ) -> Attr:
    if not isinstance(value, (_Dense, _DenseHex)):
        return value
    if result is None:
        raise _Fault("a dense attribute needs the op's one result type", value.at)
    dtype = numpy_dtype(result.dtype)
    shape = result.shape
    if module.level is Level.LOCAL and result.sharding is not None:
        unknown = [m for m in result.sharding.sharded_mesh_dims() if m not in module.mesh.names]
        if unknown:
            raise _Fault(f"mesh dim {unknown[0]!r} is not in {module.mesh.text()}", value.at)
        shape = result.global_shape(module.mesh)
    if isinstance(value, _DenseHex):
        return _array_from_hex(value, dtype, shape)
    try:
        array = np.array(value.value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise _Fault(f"dense value does not fit {result.dtype}: {e}", value.at) from None
    if array.size == 0 and math.prod(shape) == 0:
        array = array.reshape(shape)
    return array


def _array_from_hex(value: _DenseHex, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    try:
        data = bytes.fromhex(value.hex)
    except ValueError:
        raise _Fault("dense_hex data is not hexadecimal", value.at) from None
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise _Fault(f"dense_hex holds {len(data)} bytes, {dtype.name}{list(shape)} needs "
                     f"{expected}", value.at)
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# errors


def _error(text: str, message: str, line: int, column: int) -> IRParseError:
    lines = text.split("\n")
    context = lines[line - 1] if 1 <= line <= len(lines) else ""
    return IRParseError(message, line, column, context)


def _syntax_error(text: str, e: UnexpectedInput) -> IRParseError:
    return _error(text, *_syntax_message(text, e))


def _syntax_message(text: str, e: UnexpectedInput) -> tuple[str, int, int]:
    """What lark's complaint about `text` says, with its line and column."""
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream
        assert pos is not None, "lark sets the position of an unexpected character"
        char = text[pos] if pos < len(text) else ""
        return f"unexpected character {char!r}", e.line, e.column
    if isinstance(e, UnexpectedToken):
        expected = ", ".join(sorted(_describe(name) for name in e.expected))
        if e.token.type == "$END":
            lines = text.split("\n")
            return (f"unexpected end of the text, expected {expected}", len(lines),
                    len(lines[-1]) + 1)
        found = _describe(e.token.type)
        if found != repr(str(e.token)) and "\n" not in e.token:
            found += f" {str(e.token)!r}"
        return f"unexpected {found}, expected {expected}", e.line, e.column
    return str(e), max(e.line, 1), max(e.column, 1)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    pattern = _lark().get_terminal(terminal).pattern
    return repr(pattern.value) if isinstance(pattern, PatternStr) else terminal.lower()
