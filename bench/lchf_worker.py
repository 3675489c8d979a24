"""(b) of bench/local_throughput.py: langchain-huggingface's ChatHuggingFace over a
HuggingFacePipeline, run in the benchmark virtualenv (langchain-huggingface pins an older
huggingface_hub than the project's environment, so it is not installed there).

Protocol: argv = model dir, max_tokens; then one JSON line per run on stdin
({"concurrency": C, "total": N}) and one JSON result line per run on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import drive, messages, set_threads  # noqa: E402


def main() -> None:
    path, max_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    set_threads(threads)
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    pipe = pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        max_new_tokens=max_tokens,
        do_sample=False,
        return_full_text=False,
    )
    chat = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=tokenizer)

    # Count the tokens generate() really produced (re-tokenizing the reply text would not
    # give the same count); each call runs on its own thread, so a thread-local works.
    produced = threading.local()
    generate = model.generate

    def counting_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        prompt = kwargs.get("input_ids", args[0] if args else None)
        produced.n = out.shape[-1] - prompt.shape[-1]
        return out

    model.generate = counting_generate

    def invoke(i: int) -> int:
        chat.invoke(messages(i))
        return produced.n

    # Its ainvoke raises NotImplementedError for HuggingFacePipeline: callers use threads.
    threads = ThreadPoolExecutor(64)

    async def call(i: int) -> int:
        return await asyncio.get_running_loop().run_in_executor(threads, invoke, i)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        result = asyncio.run(drive(call, job["concurrency"], job["total"]))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
