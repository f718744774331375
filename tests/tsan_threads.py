"""Python threads racing the native step, for ThreadSanitizer (`bash .ci/sanitize thread`).

One thread steps Adam, one steps SGD on other parameters, one keeps replacing the Adam
parameters' gradients. pyfastopt runs on one OpenMP thread here: GNU OpenMP's pooled threads
synchronise through futexes that an uninstrumented libgomp hides from ThreadSanitizer, so
multi-threaded regions only produce false reports (see docs/trust.md).
"""

import threading

import torch

import pyfastopt

pyfastopt.set_num_threads(1)
ps = [torch.nn.Parameter(torch.zeros(1 << 15)) for _ in range(4)]
for p in ps:
    p.grad = torch.ones_like(p)
o = pyfastopt.Adam(ps, lr=1e-3)
qs = [torch.nn.Parameter(torch.zeros(1 << 15)) for _ in range(2)]
for q in qs:
    q.grad = torch.ones_like(q)
o2 = pyfastopt.SGD(qs, lr=1e-3, momentum=0.9)
stop = False


def swap():
    while not stop:
        for p in ps:
            p.grad = torch.ones_like(p)


def other():
    for _ in range(30):
        o2.step()


ts = [threading.Thread(target=swap), threading.Thread(target=other)]
for t in ts:
    t.start()
for _ in range(30):
    o.step()
stop = True
for t in ts:
    t.join()
assert all(torch.isfinite(p).all() for p in ps)
print("ok")
