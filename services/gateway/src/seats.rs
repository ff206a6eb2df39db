//! Seat rules. Pure: the gateway reads the counts, these functions decide.

/// Why a member cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeatError {
    #[error("all {seats} seats of this tenant are taken; remove a member or add seats first")]
    NoSeatFree { seats: i32 },
}

/// Every member holds one seat, so a new member needs a free one.
pub fn check_seat_free(seats: i32, members: i64) -> Result<(), SeatError> {
    if members < i64::from(seats) {
        Ok(())
    } else {
        Err(SeatError::NoSeatFree { seats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seat_is_free_until_members_equal_seats() {
        assert!(check_seat_free(3, 0).is_ok());
        assert!(check_seat_free(3, 2).is_ok());
        assert_eq!(
            check_seat_free(3, 3),
            Err(SeatError::NoSeatFree { seats: 3 })
        );
        // Seats reduced below the member count: still no seat free.
        assert!(check_seat_free(1, 5).is_err());
    }

    #[test]
    fn message_names_the_seat_count() {
        let message = check_seat_free(5, 5).unwrap_err().to_string();
        assert!(message.contains("all 5 seats"));
    }
}
