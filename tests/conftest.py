import signal

import torch


def pytest_configure(config):
    # Runs are compared bit for bit, and CPU reductions depend on the thread count: pin it once,
    # before any fixture (of any scope) trains anything.
    torch.set_num_threads(1)
    # The Ctrl-C tests send SIGINT to this process and to child runs. A shell that starts a job in
    # the background (`cmd &`, nohup, some CI runners) makes it ignore SIGINT, and exec passes that
    # on to every child: give this process Python's own handler, so children start with the
    # default disposition and the tests see what an interactive user would.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
