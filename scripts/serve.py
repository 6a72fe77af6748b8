"""Serve a trained LSTMLM with the OpenAI API; every active conversation decodes in one batched recurrent step.

    python scripts/serve.py runs/demo --host 127.0.0.1 --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
        -d '{"model": "runs/demo", "prompt": "ROMEO:", "max_tokens": 40}'

Routes: /v1/models, /v1/chat/completions, /v1/completions (`"stream": true` for server-sent events), /health.
`python scripts/serve.py --help` lists the limits (slots, queue, prompt length, max_tokens cap). Needs the [serve]
extra (`pip install -e ".[serve]"`). SIGINT / SIGTERM end the open streams and stop the server.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lstmlm.serving import serve_main  # noqa: E402

if __name__ == "__main__":
    serve_main()
