"""JSON safe to embed in an HTML file (`--html`).

The JSON itself is `browser_json` (buffer/browser_json.py: exact floats, non-finite ones spelled
out), the encoding the run directory's index is written in. Embedded in an HTML file, it sits in
`<script type="application/json">`, where the HTML parser looks only for `</script`; escaping
every `<`, `>` and `&` (and U+2028/U+2029, which older JavaScript parsers treat as line ends) as
`\\uXXXX` makes the text inert whatever the model wrote, and JSON.parse restores the characters.
"""

from __future__ import annotations

from typing import Any

from slipstream.buffer.browser_json import browser_json

_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                               "\u2028": "\\u2028", "\u2029": "\\u2029"})


def html_embedded_json(payload: Any) -> str:
    """`browser_json` safe to place between <script type="application/json"> tags."""
    return browser_json(payload).translate(_HTML_ESCAPES)
