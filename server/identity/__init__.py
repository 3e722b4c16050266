"""Identity verification (KYC): ID card rules, card OCR, face matching and liveness primitives.

The pure rules (`idcard`, `liveness`) have no model dependency. Everything that runs a model sits
behind a small Protocol (`ocr.OcrEngine`, `face.FaceEngine`) and is created through an explicit
engine object (`engines.IdentityEngines`), so a process loads each model once and tests can build
as many independent engines as they like. See docs/identity.md.
"""
