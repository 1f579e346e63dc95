"""Project-written task templates and topics for generated instruction-following prompts.

Topics are split once, by hand, into ``SEEN_TOPICS`` (train and in-distribution evaluation)
and ``UNSEEN_TOPICS`` (only in the ``ood_unseen_topics`` split). Every template reads well
with every topic; ``{recipient}`` and ``{audience}`` are filled from their own lists.
"""

from __future__ import annotations

import random

TASK_TEMPLATES: tuple[str, ...] = (
    "Write a short story about {topic}.",
    "Explain {topic} to a child.",
    "Write an email to {recipient} about {topic}.",
    "Write a poem about {topic}.",
    "Write a blog post about {topic} for {audience}.",
    "Give advice to {audience} on {topic}.",
    "Write a product description for a board game about {topic}.",
    "Write a speech for a school assembly about {topic}.",
    "Summarize what {audience} should know about {topic}.",
    "Write a diary entry from someone who spent the day thinking about {topic}.",
    "Write a dialogue between two friends discussing {topic}.",
    "Write a short essay on {topic}.",
    "Write a review of an imaginary documentary about {topic}.",
    "Write a letter to {recipient} arguing that {topic} deserves more attention.",
    "Write a news report about a local event related to {topic}.",
    "Write a lesson plan introducing {topic} to {audience}.",
    "List the pros and cons of spending a weekend learning about {topic}.",
    "Write a social media post announcing a workshop on {topic}.",
    "Write a riddle whose answer is connected to {topic}, and then explain it.",
    "Describe {topic} as if you were a tour guide.",
    "Write a job advertisement for a museum exhibit about {topic}.",
    "Write a motivational message for {audience} inspired by {topic}.",
)

SEEN_TOPICS: tuple[str, ...] = (
    "the water cycle", "lighthouses", "urban gardening", "the history of chess",
    "volcanoes", "learning a second language", "starting a new job",
    "bees and pollination", "public libraries", "saving money", "rainy days",
    "solar energy", "the invention of the printing press", "friendship", "recycling",
    "mountain hiking", "coffee", "sleep", "the moon landing", "board games",
    "bicycles", "rainforests",
)

UNSEEN_TOPICS: tuple[str, ...] = (
    "deep-sea creatures", "the Silk Road", "quantum computers", "origami", "glaciers",
    "street food", "the Olympic Games", "jazz music", "composting", "time zones",
)

RECIPIENTS: tuple[str, ...] = (
    "your manager", "a neighbor", "the city council", "an old classmate", "your team",
    "a local newspaper",
)

AUDIENCES: tuple[str, ...] = (
    "teenagers", "busy parents", "retired teachers", "college students", "small business owners",
)


def render_task(template: str, topic: str, rng: random.Random) -> str:
    """Fills a template; ``rng`` picks the recipient and audience."""
    recipient, audience = rng.choice(RECIPIENTS), rng.choice(AUDIENCES)
    return template.format(topic=topic, recipient=recipient, audience=audience)
