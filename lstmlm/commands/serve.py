"""`lstmlm serve`: the OpenAI-compatible server of `modeling_lstmlm.serving` (needs the [serve] extra)."""

from modeling_lstmlm.serving import serve_main


def main(argv: list[str] | None = None) -> None:
    return serve_main(argv)
