"""How guessable a new password is, by zxcvbn: its lists of common passwords, names and words, and the
patterns people use to vary them (password123, qwertyuiop1, Summer2024!)."""

from zxcvbn import zxcvbn

from core.errors import InvalidInput

# zxcvbn's matching grows faster than linearly with length, so it refuses more than 72 characters; a password
# whose first 72 are hard to guess is hard to guess.
_SCORED_PREFIX = 72


def check_guessable(password: str, username: str, min_score: int) -> None:
    result = zxcvbn(password[:_SCORED_PREFIX], user_inputs=[username, "crawlcoin"])
    if result["score"] >= min_score:
        return
    feedback = result["feedback"]
    why = (feedback["warning"] or "It is too easy to guess.").rstrip(".")
    hint = " ".join(feedback["suggestions"]) or "Use a few uncommon words, or a password manager."
    raise InvalidInput(f"password is too common or too easy to guess ({why[0].lower()}{why[1:]}). {hint}")
