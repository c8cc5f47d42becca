"""`parallel:SRC,TGT`: a lookup table from user-provided parallel sentence files."""

from __future__ import annotations

from pathlib import Path

from forgetscope.conjugate.transforms import TRANSFORMS
from forgetscope.errors import UserInputError
from forgetscope.files import read_text_file


class ParallelFiles:
    """A lookup table from user-provided parallel files (line i of SRC translates to line i of TGT).

    `forward` maps each line of a text through the table, `inverse` maps back; a line not
    in the table is an error (the files must cover every sentence the probes use), except
    blank lines, which are kept.
    """

    def __init__(self, source: str | Path, target: str | Path):
        self.name = f"parallel:{source},{target}"
        src, tgt = (_read_lines(Path(p)) for p in (source, target))
        if len(src) != len(tgt):
            raise UserInputError(f"parallel files differ in length: {source} has {len(src)} lines, {target} has {len(tgt)}")
        self._to, self._back = dict(zip(src, tgt)), dict(zip(tgt, src))

    def forward(self, text: str) -> str:
        return self._map(text, self._to, "source")

    def inverse(self, text: str) -> str:
        return self._map(text, self._back, "target")

    @staticmethod
    def _map(text: str, table: dict[str, str], side: str) -> str:
        out = []
        for line in text.split("\n"):
            key = line.strip()
            if not key:
                out.append(line)
            elif key in table:
                out.append(table[key])
            else:
                raise UserInputError(f"line not in the parallel {side} file: {key[:60]!r}")
        return "\n".join(out)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text_file(path, "parallel file").splitlines()]


def parallel(argument: str) -> ParallelFiles:
    files = argument.split(",")
    if len(files) != 2 or not all(files):
        raise UserInputError(f"parallel needs parallel:SRC_FILE,TGT_FILE, got {'parallel:' + argument!r}")
    return ParallelFiles(*files)


parallel.usage = "parallel:SRC_FILE,TGT_FILE"  # type: ignore[attr-defined]
TRANSFORMS.register("parallel", parallel)
