"""The suite's ground floor: errors, the registry, atomic storage and cache paths, result
records, metrics, protocol scoring, label sets and label-file parsing, storage URLs.

Nothing in ``bench.core`` imports any other part of the project (an import-linter contract,
``.importlinter``, checks it in CI); every other package may import it.
"""
