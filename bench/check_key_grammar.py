"""Check that the results-key grammar accepts every key of a folder of results files.

Usage: python bench/check_key_grammar.py DIR [DIR ...]

Run against the original Spectrum tool's published `model_snr_results/` (not part of this repo):
every key of every file, flat ({key: {snr, type}}) or sorted ({type: {key: snr}}), must parse.
Prints one line per file and exits 1 if any key is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spectrum_stream.errors import KeyGrammarError
from spectrum_stream.results.key_grammar import parse_key


def keys_of(doc: dict) -> list[str]:
    """Every key of a flat or a sorted results file."""
    out = []
    for key, value in doc.items():
        out.append(key)
        if isinstance(value, dict) and "snr" not in value:
            out.extend(value)
    return out


def main(folders: list[str]) -> int:
    refused = 0
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            keys = keys_of(json.loads(path.read_text()))  # json: NaN/Infinity SNRs are fine here
            bad = []
            for key in keys:
                try:
                    parse_key(key, path.name)
                except KeyGrammarError as exc:
                    bad.append(str(exc))
            refused += len(bad)
            print(
                f"{path.name}: {len(keys)} keys, {len(bad)} refused"
                + (f" ({bad[0]})" if bad else "")
            )
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
