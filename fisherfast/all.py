"Everything public, for `from fisherfast.all import *` (written by hand, like fastai's `all` modules: nbdev only exports names a notebook defines)"
from .core.granularity import *
from .core.masks import *
from .core.criteria import *
from .core.schedule import *
from .sparse.sparsifier import *
from .fisher.stats import *
from .fisher.criteria import *
from .fisher.obs import *
from .sparse.export import *
from .sparse.sensitivity import *
from .sparse.callback import *
