"""maserve: ship a model as a Huawei Cloud ModelArts custom image."""

from maserve.errors import InvalidInput, ServiceError
from maserve.model import Inputs, Model, ModelProtocol, UploadedFile

__all__ = ["InvalidInput", "Inputs", "Model", "ModelProtocol", "ServiceError", "UploadedFile"]
__version__ = "0.1.0"
