"""nanwatch for Keras 3 on TensorFlow — the only part of the client that imports TensorFlow or Keras.

``model.fit``, unchanged but for one callback::

    from nanwatch.keras import NanWatchCallback

    cb = NanWatchCallback("http://127.0.0.1:8000", run_id="resnet-lr3e-4")
    model.fit(x, y, callbacks=[cb])
    cb.halted  # None, or the nanwatch.Halt that stopped the run

A custom ``tf.GradientTape`` loop reports the same statistics through a :class:`nanwatch.Monitor`::

    from nanwatch import Monitor
    from nanwatch.keras import capture_activations, layer_table, step_statistics

    with Monitor("http://127.0.0.1:8000", layers=layer_table(model), framework="keras") as monitor:
        for step, (x, y) in enumerate(dataset):
            with tf.GradientTape() as tape, capture_activations(model) as acts:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            before = [tf.identity(v) for v in model.trainable_variables]
            optimizer.apply(grads, model.trainable_variables)
            stats = step_statistics(model, grads, loss=loss, lr=optimizer.learning_rate,
                                    previous_weights=before, activations=acts)
            if monitor.log_step(step, **stats):
                break  # halted: the reason is in monitor.halted

The callback also keeps non-finite updates out of the weights (``_guard``, on by default) and, with
``recover=True``, answers the service's halts by rolling back to a host snapshot with a lower learning
rate (``_recovery``; :class:`Recovery` serves custom loops).

How the callback measures (see ``_instrument``): for the length of one ``fit`` it wraps each watched
layer's ``call``, the model's ``compute_loss`` and ``train_step`` and the optimizer's ``apply``. The
reductions (``_reductions``, ``_activations``, ``_norms``) are TensorFlow ops added to the traced
training step where their tensors are made; their results land in one pre-created variable that the
callback reads once per step.
"""

from nanwatch.keras._callback import NanWatchCallback
from nanwatch.keras._custom import capture_activations, layer_table, step_statistics
from nanwatch.keras._recovery import Recovery

__all__ = ["NanWatchCallback", "Recovery", "capture_activations", "layer_table", "step_statistics"]
