"""The jobs behind ``tools/*.py`` and ``densessl <command>``.

Each module exposes ``main(argv: list[str] | None = None) -> int`` and uses
:func:`densessl.tools._common.run_main` so that bad input exits with code 2 and a one-line
message.
"""
