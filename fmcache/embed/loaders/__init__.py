"""One module per loader family, each exposing ``load(spec, weights, device, *, trust_code=False) -> Encoder``.

``trust_code`` lets a family load weights files whose loading runs code they carry
(TorchScript archives); without it such files are refused with a :class:`ModelError`.
"""
