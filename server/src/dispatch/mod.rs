//! The device side: MQTT gateways (embedded broker, external broker), protocol codecs and
//! uplink routing. The only module that touches MQTT.

pub mod embedded;
pub mod gateway;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("MQTT broker: {0}")]
    Broker(String),
}
