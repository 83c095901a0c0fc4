"Everything public, for `from fisherfast.all import *` (written by hand, like fastai's `all` modules: nbdev only exports names a notebook defines)"
from .core.args import *
from .core.layers import *
from .core.granularity import *
from .core.masks import *
from .core.context import *
from .core.schedule import *
from .stats.kinds import *
from .stats.calibrate import *
from .stats.train import *
from .criteria.base import *
from .criteria.fisher import *
from .criteria.obs import *
from .sparse.sparsifier import *
from .sparse.layerwise import *
from .sparse.export import *
from .sparse.sensitivity import *
from .sparse.callback import *
