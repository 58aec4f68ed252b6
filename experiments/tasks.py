"""Task plugins of the policy-level experiment (`policy_training.py --task package.module:Name`).

A task is any object with the attributes of `Task` below: a character alphabet (the tiny policy's vocabulary),
train and held-out prompt generators, SFT demonstrations of controllable quality, a gold reward of a completion and
a length-controlled view of that reward. `load_task("package.module:Name")` imports it (a class is instantiated
without arguments, an instance is used as it is) and checks it before any training, so a broken plugin fails in a
second with a message that names what is wrong.

The two built-ins differ in what the reward measures:

* `DigitSort` — sort the digits of "52819=": gold = 1 − Levenshtein(y, sorted digits) / length (a string distance).
* `Addition` — "37+48=": gold = partial credit by *numeric* closeness, max(0, 1 − |ŷ − y| / (y/2 + 5)), 0 for an
  unparseable answer (so "84" is worth 0.98 and "58" only 0.44, though both are one character away from "85").

This module lives with the experiments, not in the package: the protocol is a research harness for synthetic tasks
with a programmatic gold reward (a character-level vocabulary, demonstrations generated on demand); a product user's
task is a data set and an annotator, which the package already takes.
"""

from __future__ import annotations

import importlib
import inspect
import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Addition", "DigitSort", "Task", "TaskError", "load_task"]


@runtime_checkable
class Task(Protocol):
    """What the experiment needs from a task (every reward in [0, 1], 1 = perfect)."""

    name: str
    #: every character a prompt or a completion may contain (the character-level tokenizer's vocabulary)
    alphabet: str
    #: appended to every prompt before the completion ("=")
    prompt_suffix: str
    #: longest useful completion, in characters (sampling stops there)
    max_completion_chars: int

    def prompt(self, rng: random.Random) -> str:
        """One random prompt (without the suffix). Held-out and training prompts are drawn with different seeds
        and made disjoint by the experiment."""

    def demonstration(self, prompt: str, rng: random.Random, quality: float) -> str:
        """An SFT completion: correct with probability `quality`, otherwise plausibly wrong (so the SFT policy's
        samples vary in correctness, as a real SFT model's do)."""

    def gold_reward(self, prompt: str, completion: str) -> float:
        """The programmatic gold reward of a completion (the paid label of the experiment)."""

    def length_controlled_reward(self, prompt: str, completion: str) -> float:
        """The reward with the answer's length taken out (reported beside the gold reward: a policy cannot raise it
        by answering longer or shorter)."""


class TaskError(ValueError):
    """A task plugin that cannot be loaded or breaks the `Task` protocol."""


REQUIRED_ATTRIBUTES = ("name", "alphabet", "prompt_suffix", "max_completion_chars")
REQUIRED_METHODS = ("prompt", "demonstration", "gold_reward", "length_controlled_reward")


def load_task(spec: str) -> Task:
    """Import `package.module:Name` and check it against `Task` (a clear `TaskError` otherwise)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise TaskError(f"--task {spec!r}: expected 'package.module:Name' (e.g. 'tasks:DigitSort').")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error inside the plugin is reported as the plugin's
        raise TaskError(f"--task {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise TaskError(f"--task {spec!r}: module {module_name!r} has no attribute {attr!r}.")
    obj = getattr(module, attr)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise TaskError(f"--task {spec!r}: {attr}() failed: {type(exc).__name__}: {exc}") from exc
    check_task(obj, spec)
    return obj


def check_task(task, spec: str = "task") -> None:
    """Protocol and behaviour checks: attributes, methods, and one prompt/demonstration/reward round trip."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(task, a)]
    missing += [m for m in REQUIRED_METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(f"--task {spec!r}: missing {', '.join(missing)} (see experiments/tasks.py: Task).")
    if not isinstance(task.alphabet, str) or not task.alphabet or len(set(task.alphabet)) != len(task.alphabet):
        raise TaskError(f"--task {spec!r}: alphabet must be a non-empty string of distinct characters.")
    if not isinstance(task.max_completion_chars, int) or task.max_completion_chars < 1:
        raise TaskError(f"--task {spec!r}: max_completion_chars must be an integer >= 1.")
    rng = random.Random(0)
    try:
        p = task.prompt(rng)
        good = task.demonstration(p, rng, 1.0)
        values = [task.gold_reward(p, good), task.length_controlled_reward(p, good), task.gold_reward(p, "")]
    except Exception as exc:
        raise TaskError(f"--task {spec!r}: a round trip failed: {type(exc).__name__}: {exc}") from exc
    text = p + task.prompt_suffix + good
    outside = sorted(set(text) - set(task.alphabet))
    if outside:
        raise TaskError(
            f"--task {spec!r}: prompt/demonstration {text!r} has characters {outside} outside the alphabet."
        )
    if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
        raise TaskError(f"--task {spec!r}: rewards must be floats in [0, 1], got {values} for prompt {p!r}.")
    if values[0] != 1.0:
        raise TaskError(f"--task {spec!r}: a quality-1 demonstration {good!r} of {p!r} has gold {values[0]}, not 1.")


# ---------------------------------------------------------------------------------------------------- built-ins
DIGITS = "0123456789"


def distinct_prompts(draw, count: int, seen: set, attempts_per_prompt: int = 100) -> list[str]:
    """`count` prompts from `draw()` that are not in `seen` (and not repeated), adding each to `seen`: how both
    policy experiments build disjoint training and held-out sets. Stops after `attempts_per_prompt * count` draws
    (a task with fewer distinct prompts then yields fewer)."""
    out: list[str] = []
    for _ in range(attempts_per_prompt * count):
        if len(out) == count:
            break
        prompt = draw()
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def corrupt(text: str, rng: random.Random, alphabet: str = DIGITS) -> str:
    """1-3 random edits: substitute, swap neighbours, delete or insert a character."""
    s = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        i = rng.randrange(len(s)) if s else 0
        if op == 0 and s:
            s[i] = rng.choice(alphabet)
        elif op == 1 and len(s) > 1:
            j = min(i + 1, len(s) - 1)
            s[i], s[j] = s[j], s[i]
        elif op == 2 and len(s) > 1:
            del s[i]
        else:
            s.insert(i, rng.choice(alphabet))
    return "".join(s)


@dataclass
class DigitSort:
    """Sort 3-7 random digits ("52819=" -> "12589"); the reward is a normalised edit distance."""

    min_len: int = 3
    max_len: int = 7
    name: str = "digit_sort"
    alphabet: str = DIGITS + "="
    prompt_suffix: str = "="
    max_completion_chars: int = 12

    def prompt(self, rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(self.min_len, self.max_len)))

    def demonstration(self, prompt: str, rng: random.Random, quality: float) -> str:
        target = "".join(sorted(prompt))
        return target if rng.random() < quality else corrupt(target, rng)

    def gold_reward(self, prompt: str, completion: str) -> float:
        target = "".join(sorted(prompt))
        return max(0.0, 1.0 - levenshtein(completion.strip(), target) / len(target))

    def length_controlled_reward(self, prompt: str, completion: str) -> float:
        """Share of the target's positions holding the right digit (extra characters are ignored)."""
        target = "".join(sorted(prompt))
        return sum(a == b for a, b in zip(completion, target)) / len(target)


@dataclass
class Addition:
    """Add two 2-digit numbers ("37+48=" -> "85"); partial credit by numeric closeness, not by characters."""

    low: int = 10
    high: int = 99
    name: str = "addition"
    alphabet: str = DIGITS + "+="
    prompt_suffix: str = "="
    max_completion_chars: int = 5

    @staticmethod
    def answer(prompt: str) -> int:
        a, b = prompt.split("+")
        return int(a) + int(b)

    def prompt(self, rng: random.Random) -> str:
        return f"{rng.randint(self.low, self.high)}+{rng.randint(self.low, self.high)}"

    def demonstration(self, prompt: str, rng: random.Random, quality: float) -> str:
        y = self.answer(prompt)
        if rng.random() < quality:
            return str(y)
        kind = rng.randrange(3)
        if kind == 0:  # a carry error
            return str(y + rng.choice((-10, 10)))
        if kind == 1:  # a small slip
            return str(max(0, y + rng.choice((-3, -2, -1, 1, 2, 3))))
        return corrupt(str(y), rng)  # a garbled answer

    def gold_reward(self, prompt: str, completion: str) -> float:
        y = self.answer(prompt)
        text = completion.strip()
        if not text.isdigit():
            return 0.0
        return max(0.0, 1.0 - abs(int(text) - y) / (y / 2 + 5))

    def length_controlled_reward(self, prompt: str, completion: str) -> float:
        """The gold reward of the answer cut to the right number of digits (a longer answer gains nothing)."""
        return self.gold_reward(prompt, completion.strip()[: len(str(self.answer(prompt)))])
