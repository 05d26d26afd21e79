"""ModelArts-compatible import paths, so a `customize_service.py` written for the platform's
built-in inference images runs unchanged under maserve.

The platform's images ship a `model_service` package whose base classes a user's
`customize_service.py` subclasses (Huawei Cloud ModelArts, "Specifications for Writing Model
Inference Code"). This package provides the same import paths as a thin shim; `maserve.compat`
loads the script and feeds it requests.
"""
