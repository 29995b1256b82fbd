"""The plain-HTTP floor: one trivial FastAPI endpoint, served by uvicorn in its own process as the
benchmark's workflow app is, so ``bench/hotpath.py`` can time the same client against it.

``POST /echo`` takes a small JSON body (``{"i": index}``) and answers a small JSON (the index and the
time); that is all a "step" of the floor is::

    uvicorn floor_app:app --app-dir bench --port 8000
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI(title="Stepstream benchmark floor")


class Step(BaseModel):
    i: int


@app.post("/echo")
async def echo(step: Step) -> dict[str, float]:
    return {"i": step.i, "t": time.time()}


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}
