import threading

from simplelb.gate import NO_TURN, FairGate, Turn

from .conftest import wait_for


def test_slots_are_handed_over_in_arrival_order():
    gate = FairGate(1)
    gate.acquire()
    admitted = []

    def waiter(number):
        gate.acquire()
        admitted.append(number)
        gate.release()

    threads = []
    for number in range(6):
        thread = threading.Thread(target=waiter, args=(number,))
        thread.start()
        threads.append(thread)
        wait_for(lambda n=number: gate.waiting == n + 1, what=f"waiter {number} in line")
    gate.release()
    for thread in threads:
        thread.join(5)
    assert admitted == [0, 1, 2, 3, 4, 5]


def test_a_newcomer_cannot_overtake_the_line():
    gate = FairGate(1)
    gate.acquire()
    order = []
    first = threading.Thread(target=lambda: (gate.acquire(), order.append("queued"), gate.release()))
    first.start()
    wait_for(lambda: gate.waiting == 1, what="the first waiter")
    gate.release()  # hands the slot to the queued thread directly...
    gate.acquire()  # ...so this one, arriving just now, waits its turn
    order.append("newcomer")
    gate.release()
    first.join(5)
    assert order == ["queued", "newcomer"]


def test_several_slots():
    gate = FairGate(2)
    gate.acquire()
    gate.acquire()
    entered = threading.Event()
    thread = threading.Thread(target=lambda: (gate.acquire(), entered.set()))
    thread.start()
    assert not entered.wait(0.1)
    gate.release()
    assert entered.wait(5)
    thread.join(5)


def test_turn_pauses_and_releases_once():
    gate = FairGate(1)
    turn = Turn(gate)
    other = threading.Event()
    with turn.paused():
        thread = threading.Thread(target=lambda: (gate.acquire(), other.set(), gate.release()))
        thread.start()
        assert other.wait(5)  # while paused, another request got its turn
    thread.join(5)
    turn.release()
    turn.release()  # idempotent
    assert gate.free == 1


def test_no_turn_is_a_no_op():
    gate = FairGate(1)
    gate.acquire()  # the only slot is taken: anything that touched a gate would block now
    done = threading.Event()

    def use_no_turn():
        with NO_TURN.paused():
            pass
        NO_TURN.release()
        NO_TURN.release()
        done.set()

    threading.Thread(target=use_no_turn, daemon=True).start()
    assert done.wait(5)
    assert gate.free == 0 and gate.waiting == 0
