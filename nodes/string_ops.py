"""String utilities (ComfyUI's utils/string nodes): concatenate, substring, length, case, trim, replace, contains,
compare and regular expressions. Python string semantics; regex flags as the node's booleans say."""
from __future__ import annotations

import re

from engine.node import Boolean, Combo, Int, Node, Output, String

MOD = "comfy_extras.nodes_string"


def _text(name: str) -> "String":
    return String(name, multiline=True)


def _single(name: str):
    """A one-line text widget declared with ``multiline: false`` as ComfyUI's V3 nodes do."""
    from engine.node import Input

    return Input(name, "STRING", "", extra={"multiline": False})


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return (re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0) | \
        (re.DOTALL if dotall else 0)


class _StringNode(Node):
    category = "utils/string"
    python_module = MOD


class StringConcatenate(_StringNode):
    """string_a + delimiter + string_b."""
    display_name = "Concatenate"
    inputs = (_text("string_a"), _text("string_b"), _single("delimiter"))
    outputs = (Output("STRING"),)

    def run(self, ctx, string_a, string_b, delimiter):
        return (delimiter.join((string_a, string_b)),)


class StringSubstring(_StringNode):
    """string[start:end] (Python slicing: negative indices count from the end)."""
    display_name = "Substring"
    inputs = (_text("string"), Int("start"), Int("end"))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, start, end):
        return (string[start:end],)


class StringLength(_StringNode):
    """The number of characters."""
    display_name = "Length"
    inputs = (_text("string"),)
    outputs = (Output("INT", "length"),)

    def run(self, ctx, string):
        return (len(string),)


class CaseConverter(_StringNode):
    """UPPERCASE, lowercase, Capitalize (first letter) or Title Case (every word)."""
    display_name = "Case Converter"
    inputs = (_text("string"), Combo("mode", ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, mode):
        fn = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}
        return (fn[mode](string),)


class StringTrim(_StringNode):
    """Removes whitespace from both ends, the left or the right."""
    display_name = "Trim"
    inputs = (_text("string"), Combo("mode", ["Both", "Left", "Right"]))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, mode):
        return ({"Both": string.strip, "Left": string.lstrip, "Right": string.rstrip}[mode](),)


class StringReplace(_StringNode):
    """Replaces every occurrence of ``find`` with ``replace``."""
    display_name = "Replace"
    inputs = (_text("string"), _text("find"), _text("replace"))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, find, replace):
        return (string.replace(find, replace),)


class StringContains(_StringNode):
    """Whether ``substring`` occurs in ``string``."""
    display_name = "Contains"
    inputs = (_text("string"), _text("substring"), Boolean("case_sensitive", True))
    outputs = (Output("BOOLEAN", "contains"),)

    def run(self, ctx, string, substring, case_sensitive):
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(_StringNode):
    """Whether string_a starts with, ends with or equals string_b."""
    display_name = "Compare"
    inputs = (_text("string_a"), _text("string_b"), Combo("mode", ["Starts With", "Ends With", "Equal"]),
              Boolean("case_sensitive", True))
    outputs = (Output("BOOLEAN"),)

    def run(self, ctx, string_a, string_b, mode, case_sensitive):
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        return ({"Starts With": string_a.startswith, "Ends With": string_a.endswith,
                 "Equal": string_a.__eq__}[mode](string_b),)


class RegexMatch(_StringNode):
    """Whether the pattern matches anywhere in the string."""
    display_name = "Regex Match"
    inputs = (_text("string"), _text("regex_pattern"), Boolean("case_insensitive", True),
              Boolean("multiline", False), Boolean("dotall", False))
    outputs = (Output("BOOLEAN", "matches"),)

    def run(self, ctx, string, regex_pattern, case_insensitive, multiline, dotall):
        return (re.search(regex_pattern, string, _flags(case_insensitive, multiline, dotall)) is not None,)


class RegexExtract(_StringNode):
    """The first match, all matches (one per line), the group ``group_index`` of the first match, or that group of
    every match (one per line); empty when nothing matches."""
    display_name = "Regex Extract"
    inputs = (_text("string"), _text("regex_pattern"),
              Combo("mode", ["First Match", "All Matches", "First Group", "All Groups"]),
              Boolean("case_insensitive", True), Boolean("multiline", False), Boolean("dotall", False),
              Int("group_index", 1, min=0, max=100))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, regex_pattern, mode, case_insensitive, multiline, dotall, group_index):
        flags = _flags(case_insensitive, multiline, dotall)
        matches = list(re.finditer(regex_pattern, string, flags))
        if not matches:
            return ("",)

        def group(m):
            return (m.group(group_index) or "") if group_index <= (m.re.groups or 0) else ""
        if mode == "First Match":
            return (matches[0].group(0),)
        if mode == "All Matches":
            return ("\n".join(m.group(0) for m in matches),)
        if mode == "First Group":
            return (group(matches[0]),)
        return ("\n".join(group(m) for m in matches),)


class RegexReplace(_StringNode):
    """Find and replace text using regex patterns."""
    display_name = "Regex Replace"
    inputs = (_text("string"), _text("regex_pattern"), _text("replace"),
              Boolean("case_insensitive", True, optional=True), Boolean("multiline", False, optional=True),
              Boolean("dotall", False, optional=True,
                      tooltip="When enabled, the dot (.) character will match any character including newline "
                              "characters. When disabled, dots won't match newlines."),
              Int("count", 0, min=0, max=100, optional=True,
                  tooltip="Maximum number of replacements to make. Set to 0 to replace all occurrences (default). "
                          "Set to 1 to replace only the first match, 2 for the first two matches, etc."))
    outputs = (Output("STRING"),)

    def run(self, ctx, string, regex_pattern, replace, case_insensitive=True, multiline=False, dotall=False,
            count=0):
        return (re.sub(regex_pattern, replace, string, count=count,
                       flags=_flags(case_insensitive, multiline, dotall)),)


NODES = [StringConcatenate, StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace, StringContains,
         StringCompare, RegexMatch, RegexExtract, RegexReplace]
