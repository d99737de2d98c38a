"""The first book's names: ``from fastopt.book import *`` for ``from common.optimizer import *``.

*Deep Learning from Scratch* (Koki Saitoh, O'Reilly Japan, 2016; code at
https://github.com/oreilly-japan/deep-learning-from-scratch). Its ``common/optimizer.py`` has
no ``__all__``, so a star import of it hands a script the six classes and ``np``, the NumPy
module that file imports; the book's ``ch06/optimizer_compare_mnist.py`` uses that ``np``.
This module gives exactly those names, no more, so its star import stays the same as
fastopt grows. The classes are fastopt's own: the first book is fastopt's default, with the
book's signatures, defaults and numbers (``Nesterov`` in the form the book has used since 2021).
"""
import numpy as np

from .optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSprop", "np"]
