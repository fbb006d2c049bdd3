//! A wake-up signal for tasks on one executor: any number of waiters, each
//! woken by the next `notify`. Single-threaded (`Rc`), no locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting on it.
#[derive(Debug, Default)]
pub struct Signal {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Wakes all current waiters.
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Registers `cx` to be woken by the next `notify`.
    pub fn register(&self, cx: &Context<'_>) {
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
    }

    /// Resolves at the next `notify` after this call.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            start: self.generation.get(),
        }
    }
}

/// Future returned by [`Signal::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    signal: &'a Signal,
    start: u64,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.start {
            return Poll::Ready(());
        }
        self.signal.register(cx);
        Poll::Pending
    }
}
