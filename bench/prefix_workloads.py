"""The prefix-cache benchmark's three workloads, generated from a seed: (a) multi-turn
conversations, (b) a few long system prompts shared by many short questions, (c) no sharing.

Text is words drawn from a fixed list, each about one token of the stand-in's byte-level BPE.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Each of these (with its leading space) is one token of workers.tinymodel's tokenizer, so a text
# of N words is about N tokens; the real sizes come from the answers' usage.
_WORD_LINES = """
the of and to in is for that with as on by this be are from it an or not at which can if each
value name list file data type error class object string number return default first last new
time line path module function method result test case field key table user system message
block prefix memory thread read write open close start stop check build parse format print call
run size count state mode level order group item entry index point range part length width
"""
WORDS = _WORD_LINES.split()

WORKLOADS = {
    "a": "multi-turn conversations",
    "b": "shared system prompts",
    "c": "no sharing",
}


@dataclass(frozen=True)
class Sizes:
    """How much traffic a run sends. Workloads (b) and (c) send conversations x turns requests."""

    conversations: int = 12
    turns: int = 4
    first_tokens: int = 3000  # (a) first turn, (b) system prompt, (c) each prompt
    turn_tokens: int = 300  # (a) each later user message
    system_prompts: int = 3  # (b)
    question_tokens: int = 30  # (b)

    @property
    def requests(self) -> int:
        return self.conversations * self.turns


QUICK = Sizes(
    conversations=3,
    turns=2,
    first_tokens=400,
    turn_tokens=40,
    system_prompts=2,
    question_tokens=10,
)


@dataclass(frozen=True)
class Conversation:
    """User messages sent one turn at a time, each turn resending the whole history.

    `session` is what the session-affinity policy sends as x-session-id.
    """

    session: str
    user_turns: tuple[str, ...]
    system: str | None = None


def text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def multi_turn(sizes: Sizes, rng: random.Random) -> list[Conversation]:
    """(a) Each conversation opens with a long message, then short follow-ups."""
    return [
        Conversation(
            session=f"conv-{index}",
            user_turns=(
                text(rng, sizes.first_tokens),
                *(text(rng, sizes.turn_tokens) for _ in range(sizes.turns - 1)),
            ),
        )
        for index in range(sizes.conversations)
    ]


def shared_system(sizes: Sizes, rng: random.Random) -> list[Conversation]:
    """(b) One request per user: a system prompt (drawn at random) and a short question.

    The session id is the system prompt's: the reference policy keeps each prompt on one worker.
    """
    prompts = [text(rng, sizes.first_tokens) for _ in range(sizes.system_prompts)]
    chosen = [rng.randrange(len(prompts)) for _ in range(sizes.requests)]
    return [
        Conversation(
            session=f"system-{index}",
            user_turns=(text(rng, sizes.question_tokens),),
            system=prompts[index],
        )
        for index in chosen
    ]


def no_sharing(sizes: Sizes, rng: random.Random) -> list[Conversation]:
    """(c) Unrelated prompts of the long size, each with its own session id."""
    return [
        Conversation(
            session=f"req-{rng.getrandbits(64):016x}", user_turns=(text(rng, sizes.first_tokens),)
        )
        for _ in range(sizes.requests)
    ]


def build(workload: str, sizes: Sizes, seed: int) -> list[Conversation]:
    """The same traffic for every policy given the same seed (one seed per repetition)."""
    rng = random.Random(f"{workload}-{seed}")
    makers = {"a": multi_turn, "b": shared_system, "c": no_sharing}
    return makers[workload](sizes, rng)
