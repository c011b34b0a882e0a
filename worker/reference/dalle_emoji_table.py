"""Writes worker/src/models/dalle/emoji.tsv from the `emoji` package that
min-dalle's tokenizer calls (`emoji.demojize(text, delimiters=['', ''])`).

Each line: the emoji's characters, its English name without colons, and
`c` when its status is `component` (skin tones and hair styles), which
demojize treats differently after a zero-width joiner.
"""
import os

import emoji
from emoji import unicode_codes

unicode_codes.load_from_json("en")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "models", "dalle", "emoji.tsv")
with open(out, "w", encoding="utf8") as f:
    f.write(f"# emoji {emoji.__version__}: characters, English name, c = component\n")
    for k, v in unicode_codes.EMOJI_DATA.items():
        assert "\t" not in k and "\n" not in k and "\t" not in v["en"]
        flag = "c" if v["status"] == unicode_codes.STATUS["component"] else ""
        f.write(f"{k}\t{v['en'][1:-1]}\t{flag}\n")
