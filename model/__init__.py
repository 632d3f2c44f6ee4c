"""The forecasters: Keras layers and architectures, tf.data input, training, registry, verification.

Submodules, imported on use (``nowcast.model.train`` loads TensorFlow; the
tiling and the verification scores do not):

- :mod:`~nowcast.model.layers`, :mod:`~nowcast.model.architectures`, :mod:`~nowcast.model.losses`
- :mod:`~nowcast.model.normalization` (model space, NumPy only), :mod:`~nowcast.model.data`
  (tf.data from windows.zarr), :mod:`~nowcast.model.train`,
  :mod:`~nowcast.model.calibration` (the change's weight per lead, set after training)
- :mod:`~nowcast.model.registry` (versioned models), :mod:`~nowcast.model.forecaster` and
  :mod:`~nowcast.model.tiling` (a model over a whole grid)
- :mod:`~nowcast.model.verification` (scores, baselines, plots) and :mod:`~nowcast.model.verify`
  (a model on a windows split, stored forecasts against the archive)

Imports the store schemas (:mod:`nowcast.pipelines.stores`) and no Beam.
"""
