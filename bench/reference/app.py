"""The reference stack the seeds describe, as teams write it today: FastAPI +
slowapi (rate limit) + an API-key header check + a pickled-in-memory
scikit-learn RandomForest (the same iris model Warden serves, trained the same
way; or, with REFERENCE_FOREST=default, scikit-learn's default forest, which
Warden then serves from default-forest/model.onnx), served by uvicorn over TLS. bench/run.sh measures it side by side with
Warden (docs/benchmarks.md).

    uvicorn app:app --ssl-keyfile key.pem --ssl-certfile cert.pem
"""

import os

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

SEED = 20261123  # scripts/train_demo_models.py
API_KEY = os.environ.get("REFERENCE_API_KEY", "reference-key")

iris = load_iris()
x_train, _, y_train, _ = train_test_split(iris.data, iris.target, test_size=0.25, random_state=SEED,
                                          stratify=iris.target)
# REFERENCE_FOREST=default: scikit-learn's defaults (100 trees, no depth limit),
# the model the seeds' stack would hold; otherwise the demo model's size.
if os.environ.get("REFERENCE_FOREST") == "default":
    model = RandomForestClassifier(random_state=SEED)
else:
    model = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED)
model.fit(x_train.astype(np.float32), y_train)
classes = list(iris.target_names)

limiter = Limiter(key_func=get_remote_address)
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)


class Instances(BaseModel):
    instances: list[list[float]]


def api_key(x_api_key: str = Header(...)):
    if x_api_key != API_KEY:
        raise HTTPException(status_code=401, detail="invalid API key")


@app.post("/v1/models/iris:predict", dependencies=[Depends(api_key)])
@limiter.limit("1000000/minute")
def predict(request: Request, body: Instances):
    x = np.asarray(body.instances, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 4 or not np.isfinite(x).all():
        raise HTTPException(status_code=422, detail="expected rows of 4 finite numbers")
    probs = model.predict_proba(x)
    return {"predictions": [
        {"label": classes[int(p.argmax())], "probabilities": {c: round(float(v), 2) for c, v in zip(classes, p)}}
        for p in probs]}
