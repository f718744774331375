"""Optimizer study: GD, SGD, momentum, Nesterov, Adagrad, Adadelta, RMSprop, Adam, AdamW.

Two commands (``python -m pyfastopt.study mnist|surfaces``, or the ``pyfastopt-study`` script):

* ``mnist`` trains one MLP on real MNIST with every method, with pyfastopt's optimizers and with
  the matching ``torch.optim`` for-loop classes on the same batches, and reports final loss, test
  accuracy, training time, time inside ``optimizer.step()`` and time to a target loss.
* ``surfaces`` traces each method's path on classic 2-D test functions (Rosenbrock, a saddle,
  Beale) and draws them on contour plots.

One method table (:mod:`.methods`) drives every run.
"""
