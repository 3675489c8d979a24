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

    # Its ainvoke raises NotImplementedError for HuggingFacePipeline: callers use threads.
    threads = ThreadPoolExecutor(64)

    async def call(i: int) -> int:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(threads, chat.invoke, messages(i))
        return len(tokenizer.encode(reply.content, add_special_tokens=False))

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        result = asyncio.run(drive(call, job["concurrency"], job["total"]))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
