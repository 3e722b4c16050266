"""Locating script phrases in a recognised transcript: toneless pinyin, fuzzy, negation-aware.

Pure functions, no model: the recogniser's most frequent errors are homophones (宝本 for 保本,
路因 for 录音), so texts are compared as sequences of toneless pinyin syllables, with the
retroflex/flat initials and -n/-ng finals folded together (common accent and recogniser
confusions). A phrase is found by approximate substring matching (Sellers' edit distance with a
free start and end), where a syllable substituted by a similar one costs less than a whole edit.

Fuzzy matching alone is dangerous for compliance: 是的 is found inside 不是的, 投资有风险 is one
edit away from 投资没有风险, and 保本 is inside 不保本. So every match counts the negation words
in the matched span and just before it (within the same clause) and compares that with the
phrase itself: a different parity means the transcript says the opposite.

A customer's answer is judged by its whole clause (`locate_answer`): a short answer inside a
longer word is no answer (对 in 对不起), a negation before it in the clause negates it, and one
after it, a question or a condition makes it no plain yes (明白不了, 可以不录吗？, 是的话我再看看).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from pypinyin import Style, lazy_pinyin

# Characters that negate what follows them. 无 and 非 also make words that are not negations;
# those are listed in _NOT_NEGATIONS.
NEGATIONS = frozenset("不没沒未非别無无勿否莫甭")
# Words that contain a negation character but do not negate (affirmative answers, intensifiers,
# conjunctions). Kept short on purpose: each entry is a way to miss a real negation.
_NOT_NEGATIONS = (
    "非常",
    "无论",
    "不论",
    "不管",
    "不仅",
    "不但",
    "不过",
    "不错",
    "没错",
    "没问题",
    "不客气",
    "不好意思",
    "无误",
    "无疑",
    "毫无疑问",
)
# How far before a match a negation still applies: 不保本, 不能保本, 不一定保本.
NEGATION_WINDOW = 3

# An answer of at most this many characters is a common syllable (对, 是的, 可以): it counts only
# where it opens its clause, never inside a longer word or sentence.
SHORT_ANSWER = 2
# May come before an answer in its clause: hesitation sounds (嗯，对 written without the comma).
_FILLERS = frozenset("嗯啊哦噢呃")
# May follow a one-character answer in its clause without making it another word: 对的, 对啊.
_PARTICLES = frozenset("的了啊呀吧哈嗯哦噢啦")
# A clause with one of these asks instead of answering (可以吗, 是嘛, 为什么要录), ...
_QUESTIONS = ("吗", "嘛", "什么", "怎么")
# ... and one with these puts a condition (是的话我再看看: "if so, I'll think about it").
_CONDITIONS = ("的话", "如果", "要是", "假如", "万一")

_DIGITS = dict(zip("0123456789", "零一二三四五六七八九", strict=True))
_CLAUSE_BREAKS = frozenset("，。！？；：、,.!?;:\n…")


@dataclass(frozen=True)
class Syllables:
    """A text as pinyin syllables, each pointing back to its character."""

    text: str
    syllables: tuple[str, ...]
    # Index in `text` of the character (or the first of the ASCII word) of each syllable.
    positions: tuple[int, ...]
    # Clause number of each syllable: a negation does not reach across a comma or full stop.
    clauses: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.syllables)

    def char_span(self, start: int, end: int) -> tuple[int, int]:
        """Character range of syllables [start, end)."""
        if start >= end:
            return (0, 0)
        last = self.positions[end - 1]
        tail = last + 1
        while tail < len(self.text) and self.text[tail].isascii() and self.text[tail].isalnum():
            tail += 1
        return (self.positions[start], tail)


@dataclass(frozen=True)
class Match:
    phrase: str
    # Syllable range [start, end) in the searched text, and the characters it covers.
    start: int
    end: int
    excerpt: str
    char_start: int
    char_end: int
    distance: float
    similarity: float
    negated: bool
    # Why an answer that is not negated is still no plain yes ("a question", "a condition", "a
    # negation after it"); only locate_answer sets it.
    doubt: str = ""

    @property
    def affirmed(self) -> bool:
        return not self.negated and not self.doubt


def fold(syllable: str) -> str:
    """Merge the distinctions most often lost by accents and by the recogniser."""
    for retroflex, flat in (("zh", "z"), ("ch", "c"), ("sh", "s")):
        if syllable.startswith(retroflex):
            syllable = flat + syllable[2:]
            break
    if syllable.endswith(("ing", "eng")):
        syllable = syllable[:-1]
    return syllable


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


@lru_cache(maxsize=4096)
def to_syllables(text: str) -> Syllables:
    """Toneless, folded pinyin of a text; punctuation dropped (it only separates clauses)."""
    normalised = "".join(_DIGITS.get(c, c) for c in text)
    syllables: list[str] = []
    positions: list[int] = []
    clauses: list[int] = []
    clause = 0
    i = 0
    while i < len(normalised):
        char = normalised[i]
        if _is_han(char):
            j = i
            while j < len(normalised) and _is_han(normalised[j]):
                j += 1
            # The whole run at once, so that pypinyin's phrase dictionary picks the reading of
            # polyphonic characters (银行 háng, 行为 xíng) from their context.
            for k, reading in enumerate(lazy_pinyin(normalised[i:j], style=Style.NORMAL)):
                syllables.append(fold(reading.lower()))
                positions.append(i + k)
                clauses.append(clause)
            i = j
        elif char.isascii() and char.isalnum():
            j = i
            while j < len(normalised) and normalised[j].isascii() and normalised[j].isalnum():
                j += 1
            syllables.append(normalised[i:j].lower())
            positions.append(i)
            clauses.append(clause)
            i = j
        else:
            if char in _CLAUSE_BREAKS:
                clause += 1
            i += 1
    return Syllables(text, tuple(syllables), tuple(positions), tuple(clauses))


@lru_cache(maxsize=4096)
def sounds(text: str) -> tuple[str, ...]:
    """Toned pinyin of a text's letters and digits, punctuation dropped: the same for one word in
    Traditional and Simplified characters (對/对) and for exact homophones, different for what the
    ear tells apart (被 bèi / 本 běn, 买 mǎi / 卖 mài)."""
    spoken = "".join(c for c in text if c.isalnum())
    return tuple(reading.lower() for reading in lazy_pinyin(spoken, style=Style.TONE3))


# Initials after fold(): zh/ch/sh are already z/c/s.
_INITIALS = (
    "b",
    "p",
    "m",
    "f",
    "d",
    "t",
    "n",
    "l",
    "g",
    "k",
    "h",
    "j",
    "q",
    "x",
    "r",
    "z",
    "c",
    "s",
    "y",
    "w",
)


def _split(syllable: str) -> tuple[str, str]:
    if syllable[:1] in _INITIALS:
        return syllable[:1], syllable[1:]
    return "", syllable


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@lru_cache(maxsize=65536)
def syllable_cost(a: str, b: str) -> float:
    """0 for the same syllable, 1 for unrelated ones.

    A different initial costs half (保 bao / 跑 pao: a real confusion, but 保本 / 保证 must stay
    apart for a two-syllable phrase to be matched strictly); the final costs the other half in
    proportion to its letter edit distance (的 de / 等 den: a quarter).
    """
    if a == b:
        return 0.0
    if not (a.isalpha() and a.islower() and b.isalpha() and b.islower()):
        return 1.0
    (ia, fa), (ib, fb) = _split(a), _split(b)
    final = _levenshtein(fa, fb) / max(len(fa), len(fb), 1)
    return min(1.0, (0.5 if ia != ib else 0.0) + 0.5 * final)


def negating_positions(text: str) -> frozenset[int]:
    """Indices of the characters of `text` that negate (not those inside 非常, 没问题, ...).

    A negation character that ends its clause has nothing left to negate (a question particle
    such as 好不？, or a syllable the recogniser appended: 相匹配无，), so it does not count; nor
    does one repeating the character before it (是否否清楚: a stammer or a recogniser echo, where
    a double negative would need a word between).
    """
    exempt = _exempt_positions(text)
    return frozenset(
        i
        for i, c in enumerate(text)
        if c in NEGATIONS
        and i not in exempt
        and not (i + 1 < len(text) and text[i + 1] in _CLAUSE_BREAKS)
        and not (i > 0 and text[i - 1] == c)
    )


def _exempt_positions(text: str) -> set[int]:
    """Indices of the characters of `text` inside words that do not negate (非常, 没问题, ...)."""
    exempt: set[int] = set()
    for word in _NOT_NEGATIONS:
        at = text.find(word)
        while at >= 0:
            exempt.update(range(at, at + len(word)))
            at = text.find(word, at + 1)
    return exempt


def negation_count(text: str) -> int:
    return len(negating_positions(text))


def is_negated(phrase: str, haystack: Syllables, start: int, end: int) -> bool:
    """Whether the transcript around [start, end) negates the phrase (or un-negates it)."""
    heard = _count_in_window(haystack, start, end) - _recogniser_negations(
        to_syllables(phrase), haystack, start, end
    )
    return (heard - negation_count(phrase)) % 2 == 1


def _recogniser_negations(phrase: Syllables, haystack: Syllables, start: int, end: int) -> int:
    """The part of the negation difference that is the recogniser's doing, not the speaker's.

    Audio cannot tell homophones apart, so where the transcript writes a negation for the very
    syllable at which the phrase has a non-negating character (未 wei for 为 wei) that is +1,
    and a phrase's negation written as a non-negating homophone (部 bu for 不 bu) is -1.

    A negation only negates the word after it, so a difference counts only where that word was
    heard: a phrase's negation missing together with the word after it (理财非存款 heard as
    理财子: the recogniser lost the stretch) is -1, and a negation written into a stretch that
    matches nothing expected (garbled audio) is +1. A negation the speaker added or dropped
    before a word that was heard (投资没有风险, 本产品保证本金) still counts.
    """
    heard = haystack.syllables[start:end]
    said_negations = negating_positions(phrase.text)
    heard_negations = negating_positions(haystack.text)
    # An echo (the second 否 of 是否否) may be what the alignment pairs with the phrase's 否.
    echoes = {
        at + 1
        for at in heard_negations
        if at + 1 < len(haystack.text) and haystack.text[at + 1] == haystack.text[at]
    }
    pairs = _aligned_pairs(phrase.syllables, heard)
    same = [(i, j) for i, j in pairs if phrase.syllables[i] == heard[j]]
    said_heard = {i for i, _ in same}
    heard_said = {j for _, j in same}
    delta = 0
    for i, j in same:
        expected = phrase.positions[i] in said_negations
        written = haystack.positions[start + j] in heard_negations | echoes
        delta += int(written and not expected) - int(expected and not written)
    for i in range(len(phrase)):
        if (
            i not in said_heard
            and phrase.positions[i] in said_negations
            and i + 1 not in said_heard
        ):
            delta -= 1
    for j in range(len(heard)):
        if (
            j not in heard_said
            and haystack.positions[start + j] in heard_negations
            and j + 1 not in heard_said
        ):
            delta += 1
    return delta


def _aligned_pairs(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[int, int]]:
    """Index pairs that a least-cost alignment of `a` to `b` puts at the same place."""
    cost = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        cost[i][0] = float(i)
    for j in range(1, len(b) + 1):
        cost[0][j] = float(j)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + syllable_cost(a[i - 1], b[j - 1]),
                cost[i - 1][j] + 1.0,
                cost[i][j - 1] + 1.0,
            )
    pairs: list[tuple[int, int]] = []
    i, j = len(a), len(b)
    while i > 0 and j > 0:
        if cost[i][j] == cost[i - 1][j - 1] + syllable_cost(a[i - 1], b[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1.0:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _count_in_window(haystack: Syllables, start: int, end: int) -> int:
    first = start
    while (
        first > 0
        and start - (first - 1) <= NEGATION_WINDOW
        and haystack.clauses[first - 1] == haystack.clauses[start]
    ):
        first -= 1
    lo, _ = haystack.char_span(first, start + 1)
    _, hi = haystack.char_span(start, end)
    window = haystack.text[lo:hi]
    # Look a few characters beyond the window's start so that an exception word cut by it
    # (没问题 with only 问题 inside) still cancels its negation character.
    padded_lo = max(0, lo - 2)
    count = negation_count(haystack.text[padded_lo:hi])
    count -= sum(1 for c in haystack.text[padded_lo:lo] if c in NEGATIONS)
    return max(count, 0) if window else 0


def locate(phrase: str, haystack: Syllables, min_similarity: float) -> list[Match]:
    """All non-overlapping approximate occurrences of `phrase`, best first."""
    pattern = to_syllables(phrase).syllables
    text = haystack.syllables
    m, n = len(pattern), len(text)
    if m == 0 or n == 0:
        return []
    max_distance = (1.0 - min_similarity) * m
    # Sellers' algorithm: row 0 is all zeros, so a match may start anywhere in the text.
    # `origin[i][j]` remembers where the best path to (i, j) started, instead of a traceback.
    distance = [0.0] * (n + 1)
    origin = list(range(n + 1))
    for i in range(1, m + 1):
        new_distance = [float(i)] + [0.0] * n
        new_origin = [0] * (n + 1)
        p = pattern[i - 1]
        for j in range(1, n + 1):
            best = distance[j - 1] + syllable_cost(p, text[j - 1])
            start = origin[j - 1]
            if distance[j] + 1.0 < best:  # the phrase's syllable is missing from the text
                best, start = distance[j] + 1.0, origin[j]
            if new_distance[j - 1] + 1.0 < best:  # an extra syllable in the text
                best, start = new_distance[j - 1] + 1.0, new_origin[j - 1]
            new_distance[j] = best
            new_origin[j] = start
        distance, origin = new_distance, new_origin
    candidates = sorted(
        (distance[j], j - origin[j], origin[j], j)
        for j in range(1, n + 1)
        if distance[j] <= max_distance + 1e-9 and origin[j] < j
    )
    matches: list[Match] = []
    taken: list[tuple[int, int]] = []
    for dist, _, start, end in candidates:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        lo, hi = haystack.char_span(start, end)
        matches.append(
            Match(
                phrase=phrase,
                start=start,
                end=end,
                excerpt=haystack.text[lo:hi],
                char_start=lo,
                char_end=hi,
                distance=round(dist, 3),
                similarity=round(1.0 - dist / m, 3),
                negated=is_negated(phrase, haystack, start, end),
            )
        )
    return matches


def locate_answer(answer: str, haystack: Syllables, min_similarity: float) -> list[Match]:
    """Where a customer gives one of a line's accepted answers, best first.

    An answer is judged by its clause (the text between punctuation or segment breaks), not by
    the few characters around it as a script phrase is:
    - an answer of up to SHORT_ANSWER characters counts only where it opens its clause (after a
      hesitation sound) or follows a negation in it (不是的: the opposite, not nothing), and one
      of a single character only with no more than particles or repeats after it (对的, 对对对),
      so that 对 in 对不起 or 反对 and 同意 in 他同意 are no answers;
    - a negation before it in the clause negates it, parity regardless (我不是本人; a double
      negative is no plain yes either);
    - one after it, a question or a condition makes it no plain yes, `doubt` says which: what
      follows a yes can take it back (明白不了, 可以不录吗？, 是的话…) or not (是自愿的不是被迫的),
      which is for a person to judge.
    """
    spoken = sum(1 for c in answer if c.isalnum())
    found: list[Match] = []
    for match in locate(answer, haystack, min_similarity):
        first, last = _clause_bounds(haystack.text, match.char_start, match.char_end)
        clause = haystack.text[first:last]
        exempt = _exempt_positions(clause)
        negations = [first + i for i, c in enumerate(clause) if c in NEGATIONS and i not in exempt]
        before = any(at < match.char_start for at in negations)
        if spoken <= SHORT_ANSWER:
            opening = first
            while opening < match.char_start and (
                haystack.text[opening] in _FILLERS or haystack.text[opening].isspace()
            ):
                opening += 1
            rest = haystack.text[match.char_end : last]
            allowed = _PARTICLES | set(match.excerpt)
            inside_word = spoken == 1 and any(not (c in allowed or c.isspace()) for c in rest)
            # After a negation (不是的, 我不清楚) it is the opposite of the answer, not absent.
            if inside_word or (match.char_start != opening and not before):
                continue
        doubt = ""
        asks = haystack.text[last : last + 1] in ("？", "?")
        if asks or any(word in clause for word in _QUESTIONS):
            doubt = "a question"
        elif any(at >= match.char_end for at in negations):
            doubt = "a negation after it"
        elif any(word in clause for word in _CONDITIONS):
            doubt = "a condition"
        match = dataclasses.replace(match, negated=match.negated or before, doubt=doubt)
        if not match.affirmed:
            # The evidence of a no is the clause, not the answer's few characters inside it.
            while first < last and haystack.text[first].isspace():
                first += 1
            while last > first and haystack.text[last - 1].isspace():
                last -= 1
            match = dataclasses.replace(
                match, excerpt=haystack.text[first:last], char_start=first, char_end=last
            )
        found.append(match)
    return found


def _clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The character range of the clause(s) holding text[start:end]."""
    first = start
    while first > 0 and text[first - 1] not in _CLAUSE_BREAKS:
        first -= 1
    last = end
    while last < len(text) and text[last] not in _CLAUSE_BREAKS:
        last += 1
    return first, last


def best_affirmed(matches: Iterable[Match]) -> Match | None:
    """The best match that the transcript does not negate (nor doubt, for an answer)."""
    return next((match for match in matches if match.affirmed), None)


def unheard(phrases: Iterable[str], heard: str, min_similarity: float) -> list[str]:
    """The phrases that `heard` does not say (affirmatively), in their order."""
    syllables = to_syllables(heard)
    return [p for p in phrases if best_affirmed(locate(p, syllables, min_similarity)) is None]
