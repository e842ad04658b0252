"""Refit TOKEN_COST_FIT, the coefficients of codex_proxy's token estimate, against o200k_base.

    pip install bpe-openai   # the exact tokenizer, a test-only oracle
    python tests/fit_token_estimate.py

Samples: the report's texts in tests/test_count_tokens_oracle.py (English prose and the stdlib's
docstrings, Python source, JavaScript, JSON tool schemas, Chinese, Japanese, Korean, a Claude
Code-sized system prompt).  The proxy's _PIECE regex cuts them into pieces, the oracle counts each
distinct piece exactly, and the fit minimises the squared error over the pieces, each weighted by
how often it occurs (weighted least squares: normal equations, Gauss elimination).

The model is read from the proxy itself, not written again here: _piece_cost is linear in each
entry of its table but for the one-token floor of a non-ASCII piece, so an entry's feature on a
piece is how much the piece's cost grows when the entry grows by one (probed from a table of ones,
where no piece is at the floor).  Held fixed: the whitespace entries (divisors, not linear),
digit_group (exact), and every entry the samples exercise too little to fit (listed in the output,
e.g. Traditional Chinese, emoji, other scripts: none is in the samples).

Prints the table to paste into codex_proxy.py (its comments kept) and the error per category with
today's table and with the refitted one.  Paste it only if it is no worse on any category.
"""
import collections
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import codex_proxy  # noqa: E402

FIXED = ("whitespace_run", "whitespace_breaks_per_token", "whitespace_spaces_per_token", "digit_group")
FEWEST_SAMPLES = 50  # what an entry must weigh on to be fitted: its feature summed over the occurrences
DECIMALS = 3


def load_oracle():
    """The test module with the samples and the exact counter, or exit saying what is missing."""
    try:
        import test_count_tokens_oracle
    except unittest.SkipTest as missing:
        sys.exit("fit_token_estimate: %s" % missing)
    return test_count_tokens_oracle


def piece_counts(texts):
    """Counter of (piece, traditional) over `texts`, as estimate_text_tokens sees them."""
    counts = collections.Counter()
    for text in texts:
        traditional = codex_proxy.mostly_traditional(text)
        for part in codex_proxy.text_slices(text):
            counts.update((piece, traditional) for piece in codex_proxy._PIECE.findall(part))
    return counts


def features(piece, traditional, names):
    """(cost of the piece from the fixed entries alone, {entry: its feature}) for the entries `names`."""
    ones = dict(codex_proxy.TOKEN_COST_FIT, **{name: 1.0 for name in names})
    at_ones = codex_proxy._piece_cost(piece, traditional, ones)
    columns = {}
    for name in names:
        grown = codex_proxy._piece_cost(piece, traditional, dict(ones, **{name: 2.0}))
        if grown != at_ones:
            columns[name] = grown - at_ones
    return at_ones - sum(columns.values()), columns


def solve(matrix, vector):
    """x with matrix x = vector, by Gauss elimination with partial pivoting."""
    size = len(vector)
    rows = [list(row) + [value] for row, value in zip(matrix, vector)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda row: abs(rows[row][col]))
        if abs(rows[pivot][col]) < 1e-12:
            raise ValueError("singular normal equations: entry %d has no independent samples" % col)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for row in range(col + 1, size):
            factor = rows[row][col] / rows[col][col]
            for k in range(col, size + 1):
                rows[row][k] -= factor * rows[col][k]
    solution = [0.0] * size
    for col in reversed(range(size)):
        done = sum(rows[col][k] * solution[k] for k in range(col + 1, size))
        solution[col] = (rows[col][size] - done) / rows[col][col]
    return solution


def fit(counts, true_count):
    """(refitted table, {entry: its feature summed over the occurrences}, entries held for too few)."""
    table = codex_proxy.TOKEN_COST_FIT
    free = [name for name in table if name not in FIXED]
    samples = []
    support = collections.Counter()
    for (piece, traditional), weight in counts.items():
        fixed_cost, columns = features(piece, traditional, free)
        samples.append((weight, true_count(piece) - fixed_cost, columns))
        support.update({name: weight * value for name, value in columns.items()})
    held = [name for name in free if support[name] < FEWEST_SAMPLES]
    fitted = [name for name in free if name not in held]
    index = {name: at for at, name in enumerate(fitted)}
    normal = [[0.0] * len(fitted) for _ in fitted]
    right = [0.0] * len(fitted)
    for weight, target, columns in samples:
        target -= sum(table[name] * value for name, value in columns.items() if name in held)
        used = [(index[name], value) for name, value in columns.items() if name in index]
        for row, row_value in used:
            right[row] += weight * row_value * target
            for col, col_value in used:
                normal[row][col] += weight * row_value * col_value
    refit = dict(table, **{name: round(value, DECIMALS) for name, value in zip(fitted, solve(normal, right))})
    return refit, support, held


def estimate_with(table, text):
    """estimate_text_tokens(text) with `table` in place of TOKEN_COST_FIT."""
    saved = dict(codex_proxy.TOKEN_COST_FIT)
    codex_proxy.TOKEN_COST_FIT.update(table)
    try:
        return codex_proxy.estimate_text_tokens(text)
    finally:
        codex_proxy.TOKEN_COST_FIT.update(saved)


def table_source(table):
    """The TOKEN_COST_FIT block of codex_proxy.py with `table`'s numbers, its comments kept."""
    with open(codex_proxy.__file__, encoding="utf-8") as source:
        text = source.read()
    block = re.search(r"^TOKEN_COST_FIT = \{\n.*?^\}\n", text, re.S | re.M).group(0)
    entry = re.compile(r'^(    "(\w+)": )([-\d.]+)(,.*)$', re.M)
    return entry.sub(lambda found: found.group(1) + repr(table[found.group(2)]) + found.group(4), block)


def main():
    oracle = load_oracle()
    samples = oracle.report_samples()
    refit, support, held = fit(piece_counts(text for _, text in samples), oracle.true_count)
    print(table_source(refit))
    print("held fixed: %s" % ", ".join(FIXED))
    print("held for fewer than %d samples: %s" % (FEWEST_SAMPLES, ", ".join(
        "%s (%g)" % (name, support[name]) for name in held) or "none"))
    print("\n%-32s %9s %9s %7s %9s %7s" % ("category", "o200k", "today", "error", "refit", "error"))
    worse = []
    for name, text in samples:
        true = oracle.true_count(text)
        today, after = codex_proxy.estimate_text_tokens(text), estimate_with(refit, text)
        print("%-32s %9d %9d %+6.1f%% %9d %+6.1f%%" % (
            name, true, today, 100.0 * (today - true) / true, after, 100.0 * (after - true) / true))
        if abs(after - true) > abs(today - true):
            worse.append(name)
    print("\nrefit is worse on: %s" % (", ".join(worse) if worse else "no category: paste it"))


if __name__ == "__main__":
    main()
