from tests.conftest import EmulatorServer


def test_session_round_trip(emulator_server: EmulatorServer) -> None:
    session = emulator_server.session()
    client = emulator_server.stripe()
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
