"""Prompts with subjects and the token positions every SD tokenizer gives them: the token tests' examples, shared by
the node tests, the tokens route tests and the browser test of the token view."""

FILLER = " ".join(["cat"] * 74)

# (prompt, subjects, expected {subject: (positions, {attribute: positions})})
CASES = [
    ("a cat and a frog", "cat, frog", {"cat": ((2,), {}), "frog": ((5,), {})}),
    ("a red apple and a blue car", "red apple, blue car",
     {"apple": ((3,), {"red": (2,)}), "car": ((7,), {"blue": (6,)})}),
    ("a sombrero and an avocado", "sombrero, avocado", {"sombrero": ((2, 3), {}), "avocado": ((6,), {})}),
    ("a cat next to a cat", "cat#2", {"cat": ((6,), {})}),
    ("a cat next to a cat", "cat", {"cat": ((2,), {})}),
    ("a (red cat:1.3) and a frog", "red cat, frog", {"cat": ((3,), {"red": (2,)}), "frog": ((6,), {})}),
    ("a ((blue)) bird on a (green:0.8) branch", "blue bird, green branch",
     {"bird": ((3,), {"blue": (2,)}), "branch": ((7,), {"green": (6,)})}),
    ("a cat, a frog.", "cat, frog", {"cat": ((2,), {}), "frog": ((5,), {})}),
    ("A Cat and a Dog", "CAT, dog", {"cat": ((2,), {}), "dog": ((5,), {})}),
    ("a blue car and a red apple", "red apple, blue car",
     {"apple": ((7,), {"red": (6,)}), "car": ((3,), {"blue": (2,)})}),
    ("a red apple and a red car", "red apple, red car",
     {"apple": ((3,), {"red": (2,)}), "car": ((7,), {"red": (6,)})}),
    ("an apple that is red", "red apple", {"apple": ((2,), {"red": (5,)})}),
    ("a t-shirt and a hat", "t-shirt, hat", {"t-shirt": ((2, 3, 4), {}), "hat": ((7,), {})}),
    ("a (red apple:1.2)", "(red apple:1.2)", {"apple": ((3,), {"red": (2,)})}),
    # Over 75 tokens: the second 77-chunk starts at 77 with its own start token.
    (f"{FILLER} and a frog", "frog, cat#74", {"frog": ((79,), {}), "cat": ((74,), {})}),
]
